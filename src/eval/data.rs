//! Reading evaluation data files: `.tsv`, `.csv` and `.jsonl` with the columns `sentence1`,
//! `sentence2` and `score` (STS) or `label` (pair classification).

use std::path::Path;

use crate::{Error, Result};

// ------------------------------------------------------------------------------------------
// Data files
// ------------------------------------------------------------------------------------------

/// A sentence pair with a gold similarity score (any range).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPair {
    pub sentence1: String,
    pub sentence2: String,
    pub score: f64,
}

/// A sentence pair labelled similar (`true`, label 1) or not (`false`, label 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledPair {
    pub sentence1: String,
    pub sentence2: String,
    pub label: bool,
}

/// One cell of a data file.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Cell {
    /// The cell as shown in an error message (long text shortened).
    fn shown(&self) -> String {
        match self {
            Cell::Text(s) => shorten(s),
            Cell::Number(x) => x.to_string(),
            Cell::Bool(b) => b.to_string(),
        }
    }
}

/// A data row: its line number (1-based, where the record starts) and the requested columns.
struct Record {
    line: usize,
    cells: Vec<Cell>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Tsv,
    Csv,
    Jsonl,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "tsv" | "tab" => Ok(Format::Tsv),
        "csv" => Ok(Format::Csv),
        "jsonl" | "ndjson" => Ok(Format::Jsonl),
        _ => Err(Error::Input(format!(
            "{}: unknown data format `.{ext}`: expected .tsv, .csv or .jsonl (decompress .gz files first)",
            path.display()
        ))),
    }
}

/// Split CSV text into records (RFC 4180, as Python's `csv` module reads the excel dialect):
/// fields quoted with `"` may hold the delimiter, `""` and line breaks; a quote inside an
/// unquoted field is literal. Returns `(line where the record starts, fields)`; empty lines are
/// skipped.
fn parse_csv(text: &str, delim: char) -> std::result::Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut in_quotes = false;
    let mut quote_line = 0usize;
    let mut at_field_start = true;
    let mut after_quote = false; // just closed a quoted field
    let mut chars = text.chars().peekable();
    fn end_record(
        fields: &mut Vec<String>,
        field: &mut String,
        records: &mut Vec<(usize, Vec<String>)>,
        at: usize,
    ) {
        fields.push(std::mem::take(field));
        let f = std::mem::take(fields);
        // an empty line is no record (Python's csv.DictReader skips it too)
        if !(f.len() == 1 && f[0].is_empty()) {
            records.push((at, f));
        }
    }
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                quote_line = line;
                at_field_start = false;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_record(&mut fields, &mut field, &mut records, record_line);
                line += 1;
                record_line = line;
                at_field_start = true;
                after_quote = false;
            }
            c if c == delim => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                after_quote = false;
            }
            _ => {
                // text after a closing quote is kept, as Python's csv does
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return Err(format!(
            "line {quote_line}: a quoted field is never closed (unbalanced `\"`)"
        ));
    }
    if !(fields.is_empty() && field.is_empty()) || after_quote {
        end_record(&mut fields, &mut field, &mut records, record_line);
    }
    Ok(records)
}

/// Split TSV text into records: one per line, fields split on tabs, no quoting (a `"` is
/// literal, as STS-B's `.tsv` is read with `csv.QUOTE_NONE`). Empty lines are skipped.
fn parse_tsv(text: &str) -> Vec<(usize, Vec<String>)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i, l.split('\t').map(str::to_string).collect()))
        .collect()
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + upto.iter().filter(|&&b| b == b'\n').count();
        Error::Input(format!(
            "{}: line {line} is not valid UTF-8",
            path.display()
        ))
    })?;
    if text.starts_with('\u{feff}') {
        text.remove(0);
    }
    Ok(text)
}

/// Read the named columns of a data file, in that order.
fn read_records(path: &Path, columns: &[&str]) -> Result<Vec<Record>> {
    let name = path.display().to_string();
    let format = format_of(path)?;
    let text = read_text(path)?;
    if text.trim().is_empty() {
        return Err(Error::Input(format!("{name}: the file is empty")));
    }
    if format == Format::Jsonl {
        return read_jsonl(&name, &text, columns);
    }
    let rows = match format {
        Format::Tsv => parse_tsv(&text),
        _ => parse_csv(&text, ',').map_err(|e| Error::Input(format!("{name}: {e}")))?,
    };
    let mut rows = rows.into_iter();
    let Some((_, header)) = rows.next() else {
        return Err(Error::Input(format!("{name}: the file is empty")));
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let mut idx = Vec::new();
    let mut missing = Vec::new();
    for c in columns {
        match header.iter().position(|h| h.eq_ignore_ascii_case(c)) {
            Some(i) => idx.push(i),
            None => missing.push(format!("`{c}`")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "{name}: missing column{} {} (the header line has: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            header.join(", ")
        )));
    }
    let mut out = Vec::new();
    for (line, fields) in rows {
        // a whitespace-only line (one field) is as good as empty
        if fields.len() == 1 && fields[0].trim().is_empty() {
            continue;
        }
        if fields.len() != header.len() {
            return Err(Error::Input(format!(
                "{name}: line {line} has {} field{}, the header has {}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" },
                header.len()
            )));
        }
        let cells = idx.iter().map(|&i| Cell::Text(fields[i].clone())).collect();
        out.push(Record { line, cells });
    }
    Ok(out)
}

fn read_jsonl(name: &str, text: &str, columns: &[&str]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Input(format!("{name}: line {line_no} is not valid JSON ({e})")))?;
        let serde_json::Value::Object(obj) = v else {
            return Err(Error::Input(format!(
                "{name}: line {line_no} is not a JSON object"
            )));
        };
        let mut cells = Vec::new();
        let mut missing = Vec::new();
        for c in columns {
            match obj.get(*c) {
                Some(serde_json::Value::String(s)) => cells.push(Cell::Text(s.clone())),
                Some(serde_json::Value::Number(n)) => {
                    cells.push(Cell::Number(n.as_f64().unwrap_or(f64::NAN)))
                }
                Some(serde_json::Value::Bool(b)) => cells.push(Cell::Bool(*b)),
                Some(other) => {
                    return Err(Error::Input(format!(
                    "{name}: line {line_no}: field `{c}` must be a string or a number, not {other}"
                )))
                }
                None => missing.push(format!("`{c}`")),
            }
        }
        if !missing.is_empty() {
            return Err(Error::Input(format!(
                "{name}: line {line_no}: missing field{} {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            )));
        }
        out.push(Record {
            line: line_no,
            cells,
        });
    }
    Ok(out)
}

fn text_cell(name: &str, r: &Record, i: usize, column: &str) -> Result<String> {
    match &r.cells[i] {
        Cell::Text(s) => Ok(s.clone()),
        _ => Err(Error::Input(format!(
            "{name}: line {}: `{column}` must be a string",
            r.line
        ))),
    }
}

fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Read STS pairs: columns `sentence1`, `sentence2`, `score` (a finite number, any range).
///
/// Errors name the file and, for a bad row, its line: missing columns, a row with the wrong
/// number of fields, an unparsable score, an empty file.
pub fn read_sts(path: impl AsRef<Path>) -> Result<Vec<ScoredPair>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let records = read_records(path, &["sentence1", "sentence2", "score"])?;
    records
        .iter()
        .map(|r| {
            let score = match &r.cells[2] {
                Cell::Number(x) => Some(*x),
                Cell::Text(s) => s.trim().parse::<f64>().ok(),
                Cell::Bool(_) => None,
            }
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                let shown = r.cells[2].shown();
                Error::Input(format!(
                    "{name}: line {}: score `{shown}` is not a finite number",
                    r.line
                ))
            })?;
            Ok(ScoredPair {
                sentence1: text_cell(&name, r, 0, "sentence1")?,
                sentence2: text_cell(&name, r, 1, "sentence2")?,
                score,
            })
        })
        .collect()
}

/// Read labelled pairs: columns `sentence1`, `sentence2`, `label` (0 or 1; `0.0`/`1.0` and, in
/// JSON lines, `false`/`true` are accepted too).
///
/// Errors as [`read_sts`], and a label other than 0 or 1.
pub fn read_pairs(path: impl AsRef<Path>) -> Result<Vec<LabeledPair>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let records = read_records(path, &["sentence1", "sentence2", "label"])?;
    records
        .iter()
        .map(|r| {
            let label = match &r.cells[2] {
                Cell::Bool(b) => Some(*b),
                Cell::Number(x) => (*x == 0.0 || *x == 1.0).then_some(*x == 1.0),
                Cell::Text(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| *x == 0.0 || *x == 1.0)
                    .map(|x| x == 1.0),
            }
            .ok_or_else(|| {
                let shown = r.cells[2].shown();
                Error::Input(format!(
                    "{name}: line {}: label `{shown}` is not 0 or 1",
                    r.line
                ))
            })?;
            Ok(LabeledPair {
                sentence1: text_cell(&name, r, 0, "sentence1")?,
                sentence2: text_cell(&name, r, 1, "sentence2")?,
                label,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let text =
            "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",3\n\n\"two\nlines\",q\"uote,\r\nlast,,\"\"";
        let rows = parse_csv(text, ',').unwrap();
        assert_eq!(
            rows,
            vec![
                (1, vec!["a".into(), "b".into(), "c".into()]),
                (2, vec!["x, y".into(), "say \"hi\"".into(), "3".into()]),
                (4, vec!["two\nlines".into(), "q\"uote".into(), "".into()]),
                (6, vec!["last".into(), "".into(), "".into()]),
            ]
        );
        assert!(parse_csv("a,b\n\"open,1\n", ',')
            .unwrap_err()
            .contains("line 2"));
    }

    #[test]
    fn tsv_has_no_quoting() {
        let rows = parse_tsv("s1\ts2\tscore\r\n\"a\"\tb, c\t1\n\n");
        assert_eq!(
            rows[1],
            (2, vec!["\"a\"".into(), "b, c".into(), "1".into()])
        );
        assert_eq!(rows.len(), 2);
    }
}
