//! Reading evaluation data files: `.tsv`, `.csv` and `.jsonl` with the columns `sentence1`,
//! `sentence2` and `score` (STS) or `label` (pair classification).
//!
//! `.csv` and `.tsv` are split into records by the `csv` crate, set up to read them as Python's
//! `csv` module does (the unit tests compare both on the cases in
//! `tests/fixtures/eval/csv_cases.json`); this file adds the line numbers for messages, the
//! check that every quote is closed, and the columns by header name.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

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
/// unquoted field is literal and text after a closing quote is kept. `\r\n`, `\n` and a lone
/// `\r` end a record. Returns `(line where the record starts, fields)`; empty lines, and lines
/// holding only `""`, are skipped. A quoted field still open at the end of the text is an error
/// naming the line where its quote opened.
fn parse_csv(text: &str, delim: char) -> std::result::Result<Vec<(usize, Vec<String>)>, String> {
    let delim = match u8::try_from(delim) {
        Ok(d) if d.is_ascii() && !matches!(d, b'"' | b'\r' | b'\n') => d,
        _ => {
            return Err(format!(
                "cannot split on {delim:?}: the delimiter must be an ASCII character other than \
                 `\"` or a line break"
            ))
        }
    };
    // The csv crate ends a field still quoted at the end of the input without a word. So the
    // text is read with a line break and a one-letter record after it: that record comes back
    // on its own exactly when every quote was closed (an open field swallows both, and then
    // holds a line break, so it cannot be the letter alone).
    let mark: &[u8] = if delim == b'x' { b"\ny" } else { b"\nx" };
    let mut format = csv::ReaderBuilder::new();
    format.delimiter(delim);
    let mut records = split(text, text.as_bytes().chain(mark), format);
    match records.pop() {
        Some((_, fields)) if fields.len() == 1 && fields[0].as_bytes() == &mark[1..] => Ok(records),
        Some((line, fields)) => {
            // the open field is the record's last; line breaks can only be in quoted fields
            let before = fields.len().saturating_sub(1);
            let quote_line = line
                + fields[..before]
                    .iter()
                    .map(|f| line_breaks(f.as_bytes()))
                    .sum::<usize>();
            Err(format!(
                "line {quote_line}: a quoted field is never closed (unbalanced `\"`)"
            ))
        }
        None => Err("internal error: the CSV reader lost the end-of-text record".into()),
    }
}

/// Split TSV text into records: one per line, fields split on tabs, no quoting (a `"` is
/// literal, as STS-B's `.tsv` is read with `csv.QUOTE_NONE`). `\r\n`, `\n` and a lone `\r` end
/// a line (Python's universal newlines). Empty lines are skipped.
fn parse_tsv(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut format = csv::ReaderBuilder::new();
    format.delimiter(b'\t').quoting(false);
    split(text, text.as_bytes(), format)
}

/// The records of `input` (which starts with `text`) in `format`, as `(line where the record
/// starts in text, fields)`, records of any length; records that are one empty field (a line
/// holding only `""`) are left out.
fn split(
    text: &str,
    input: impl Read,
    mut format: csv::ReaderBuilder,
) -> Vec<(usize, Vec<String>)> {
    let mut reader = format.has_headers(false).flexible(true).from_reader(input);
    let mut lines = Lines {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    let mut record = csv::ByteRecord::new();
    // Reading bytes from memory, with records of any length, cannot fail (no I/O, no UTF-8 or
    // record length check), so `Err` is only another end.
    while let Ok(true) = reader.read_byte_record(&mut record) {
        let at = record.position().map_or(0, |p| p.byte());
        let line = lines.record_start(usize::try_from(at).unwrap_or(usize::MAX));
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        // The text is UTF-8 and every field boundary is an ASCII byte: the conversion is lossless.
        let fields = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned());
        out.push((line, fields.collect()));
    }
    out
}

/// Line numbers (1-based) in a text, for offsets met in increasing order.
struct Lines<'t> {
    text: &'t [u8],
    pos: usize,
    line: usize,
}

impl Lines<'_> {
    /// The line of a record read from offset `at`: the reader skips the empty lines before it,
    /// so the record starts at the first byte from `at` on that is not a line break.
    fn record_start(&mut self, at: usize) -> usize {
        let mut start = at.min(self.text.len()).max(self.pos);
        while matches!(self.text.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        // `pos` and `start` never split a `\r\n` (neither is a line break byte, or the end)
        self.line += line_breaks(&self.text[self.pos..start]);
        self.pos = start;
        self.line
    }
}

/// Line ends in `bytes`: each `\r\n`, `\n` and lone `\r`, as Python's universal newlines count
/// them.
fn line_breaks(bytes: &[u8]) -> usize {
    let lf = bytes.iter().filter(|&&b| b == b'\n').count();
    let lone_cr = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        .count();
    lf + lone_cr
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
    use serde_json::Value;
    use std::path::PathBuf;

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

    /// `(line, fields)` of a case's records.
    fn records(case: &Value) -> Vec<(usize, Vec<String>)> {
        let rec = case["records"].as_array().unwrap();
        rec.iter()
            .map(|r| {
                let fields = r[1].as_array().unwrap();
                let fields = fields.iter().map(|f| f.as_str().unwrap().to_string());
                (r[0].as_u64().unwrap() as usize, fields.collect())
            })
            .collect()
    }

    /// Python's `csv` module on hand-picked and random texts (scripts/make_csv_fixtures.py):
    /// the same records, fields and start lines, and an error where a quote is never closed.
    #[test]
    fn records_split_as_python_csv_reads_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/csv_cases.json");
        let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (csv, tsv) = (
            all["csv"].as_array().unwrap(),
            all["tsv"].as_array().unwrap(),
        );
        let unclosed = csv.iter().filter(|c| c["unclosed"] == true).count();
        assert!(csv.len() >= 600 && tsv.len() >= 300 && unclosed >= 100);
        let mut bad = Vec::new();
        for case in csv {
            let text = case["text"].as_str().unwrap();
            let got = parse_csv(text, ',');
            if case["unclosed"] == true {
                let line = format!("line {}:", case["unclosed_line"]);
                match got {
                    Err(e) if e.contains(&line) && e.contains("never closed") => {}
                    other => bad.push(format!("csv {text:?}: {other:?}, want an error at {line}")),
                }
            } else if got.as_ref() != Ok(&records(case)) {
                bad.push(format!("csv {text:?}: {got:?}, want {:?}", records(case)));
            }
        }
        for case in tsv {
            let text = case["text"].as_str().unwrap();
            let got = parse_tsv(text);
            if got != records(case) {
                bad.push(format!("tsv {text:?}: {got:?}, want {:?}", records(case)));
            }
        }
        assert!(
            bad.is_empty(),
            "{} differences:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn delimiters_that_cannot_work_are_errors() {
        for d in ['"', '\n', '\r', 'é', '日'] {
            let e = parse_csv("a,b\n", d).unwrap_err();
            assert!(e.contains("delimiter"), "{d:?}: {e}");
        }
        // a delimiter that is the letter the end-of-text check appends
        let rows = parse_csv("axb\n\"x\"x\"y\"\n", 'x').unwrap();
        assert_eq!(
            rows,
            [
                (1, vec!["a".to_string(), "b".into()]),
                (2, vec!["x".into(), "y".into()])
            ]
        );
        let e = parse_csv("axb\n\"open", 'x').unwrap_err();
        assert!(e.contains("line 2") && e.contains("never closed"), "{e}");
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn pair(s1: &str, s2: &str, score: f64) -> ScoredPair {
        ScoredPair {
            sentence1: s1.into(),
            sentence2: s2.into(),
            score,
        }
    }

    /// The same pairs written with every kind of line end, quoting, BOM, blank line and column
    /// layout read back equal.
    #[test]
    fn every_layout_of_the_same_pairs_reads_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let want = vec![
            pair("A man, a plan", "He said \"no\"", 1.5),
            pair("two\nlines", "é 🍕", 0.0),
            pair("tab\there", " padded ", -2.0),
        ];
        // `{E}`: the end of a record (a line break inside quotes stays `\n`)
        let template = "sentence1,sentence2,score{E}\"A man, a plan\",\"He said \"\"no\"\"\",\
                        1.5{E}\"two\nlines\",é 🍕,0{E}tab\there, padded ,-2{E}";
        let csv_with = |end: &str| template.replace("{E}", end);
        let variants: Vec<(&str, String)> = vec![
            ("lf.csv", csv_with("\n")),
            ("crlf.csv", csv_with("\r\n")),
            ("cr.csv", csv_with("\r")),
            ("bom.csv", format!("\u{feff}{}", csv_with("\r\n"))),
            ("no_final_newline.csv", csv_with("\n").trim_end().to_string()),
            (
                "blank_lines.csv",
                format!("\n\r\n{}   \n\n\"\"\n\t\n", csv_with("\n")),
            ),
            (
                "every_field_quoted.csv",
                "\"sentence1\",\"sentence2\",\"score\"\r\n\"A man, a plan\",\"He said \"\"no\"\"\",\
                 \"1.5\"\r\n\"two\nlines\",\"é 🍕\",\"0\"\r\n\"tab\there\",\" padded \",\"-2\""
                    .to_string(),
            ),
            (
                "other_columns.CSV",
                "id, SCORE ,Sentence2,extra,SENTENCE1\n1,1.5,\"He said \"\"no\"\"\",,\"A man, a \
                 plan\"\n2, 0 ,é 🍕,\"x\ny\",\"two\nlines\"\n3,-2e0, padded ,z,tab\there\n"
                    .to_string(),
            ),
            (
                "lines.jsonl",
                "{\"sentence1\": \"A man, a plan\", \"sentence2\": \"He said \\\"no\\\"\", \
                 \"score\": 1.5}\r\n\n{\"score\": 0, \"sentence2\": \"é 🍕\", \"sentence1\": \
                 \"two\\nlines\"}\n{\"sentence1\": \"tab\\there\", \"sentence2\": \" padded \", \
                 \"score\": \"-2\"}"
                    .to_string(),
            ),
        ];
        for (name, content) in &variants {
            let got = read_sts(write(d, name, content.as_bytes()));
            assert_eq!(got.as_ref().ok(), Some(&want), "{name}: {got:?}");
        }
        // TSV: no quoting, so no line breaks or tabs inside sentences; quotes are literal
        let want = vec![
            pair("A man, a plan", "He said \"no\"", 1.5),
            pair("\"quoted\"", "é 🍕", 0.0),
        ];
        let tsv = "sentence1\tsentence2\tscore\nA man, a plan\tHe said \"no\"\t1.5\n\
                   \"quoted\"\té 🍕\t0\n";
        for (name, content) in [
            ("lf.tsv", tsv.to_string()),
            ("crlf.tsv", tsv.replace('\n', "\r\n")),
            ("cr.tsv", tsv.replace('\n', "\r")),
            ("bom.tab", format!("\u{feff}{tsv}\n\n")),
        ] {
            let got = read_sts(write(d, name, content.as_bytes()));
            assert_eq!(got.as_ref().ok(), Some(&want), "{name}: {got:?}");
        }
    }

    /// Files the readers refuse: each error names the file and, for a row, the line where that
    /// row starts.
    #[test]
    fn bad_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let cases: &[(&str, &[u8], &[&str])] = &[
            ("empty.csv", b"", &["empty.csv", "the file is empty"]),
            ("blank.tsv", b" \n\r\n\t\n", &["the file is empty"]),
            (
                "bom_only.csv",
                "\u{feff}".as_bytes(),
                &["the file is empty"],
            ),
            (
                "ragged.csv",
                b"sentence1,sentence2,score\na,b,1\nc,d\n",
                &["ragged.csv", "line 3 has 2 fields, the header has 3"],
            ),
            (
                "long.tsv",
                b"sentence1\tsentence2\tscore\na\tb\t1\t\n",
                &["line 2 has 4 fields, the header has 3"],
            ),
            (
                "missing.csv",
                b"sentence1,sentence,score\na,b,1\n",
                &["missing column `sentence2`", "sentence1, sentence, score"],
            ),
            (
                "comma_header.tsv",
                b"sentence1,sentence2,score\na,b,1\n",
                &["missing columns `sentence1`, `sentence2`, `score`"],
            ),
            (
                "unclosed.csv",
                b"sentence1,sentence2,score\na,b,1\n\"c,d,2\ne,f,3\n",
                &["unclosed.csv", "line 3", "never closed"],
            ),
            (
                "unclosed_late.csv",
                b"sentence1,sentence2,score\n\"a\nb\",\"c\r\nd\",1\ne,\"f\n",
                &["line 5", "never closed"],
            ),
            (
                "after_newline.csv",
                b"sentence1,sentence2,score\n\"a\n\nb\",c,1\nd,e,high\n",
                &["line 5", "score `high` is not a finite number"],
            ),
            (
                "after_cr.csv",
                b"sentence1,sentence2,score\r\"a\rb\",c,1\rd,e,\r",
                &["line 4", "score `` is not a finite number"],
            ),
            (
                "after_blank.tsv",
                b"sentence1\tsentence2\tscore\n\n\r\na\tb\t1e400\n",
                &["line 4", "score `1e400`"],
            ),
            (
                "latin1.csv",
                b"sentence1,sentence2,score\ncaf\xe9,b,1\n",
                &["latin1.csv", "line 2 is not valid UTF-8"],
            ),
            (
                "data.xlsx",
                b"sentence1,sentence2,score\n",
                &["unknown data format `.xlsx`"],
            ),
        ];
        for (name, content, needles) in cases {
            let e = read_sts(write(d, name, content)).unwrap_err();
            assert!(matches!(e, Error::Input(_)), "{name}: {e:?}");
            let e = e.to_string();
            for n in *needles {
                assert!(e.contains(n), "{name}: {e:?} should mention {n:?}");
            }
        }
        // labels
        let p = write(
            d,
            "label.tsv",
            b"sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t1.5\n",
        );
        let e = read_pairs(p).unwrap_err().to_string();
        assert!(e.contains("line 3: label `1.5` is not 0 or 1"), "{e}");
        // a header with no rows is no error here (the evaluators refuse zero pairs)
        let p = write(d, "header.csv", b"sentence1,sentence2,label\r\n");
        assert_eq!(read_pairs(p).unwrap(), []);
    }

    /// Any bytes under any of the extensions give pairs or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let alphabet: &[&[u8]] = &[
            b"a",
            b"1",
            b"0",
            b",",
            b"\t",
            b"\"",
            b"\"\"",
            b"\r",
            b"\n",
            b"\r\n",
            b" ",
            b"{",
            b"}",
            b":",
            b"\xff",
            "é".as_bytes(),
            b"sentence1,sentence2,score,label\n",
            b"sentence1\tsentence2\tlabel\n",
            b"\"sentence1\":\"a\",",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut outcomes = [0usize; 2];
        for i in 0..600 {
            let mut bytes = Vec::new();
            for _ in 0..next() % 24 {
                bytes.extend_from_slice(alphabet[next() as usize % alphabet.len()]);
            }
            let ext = ["csv", "tsv", "jsonl"][i % 3];
            let p = write(tmp.path(), &format!("f{i}.{ext}"), &bytes);
            outcomes[usize::from(read_sts(&p).is_ok())] += 1;
            outcomes[usize::from(read_pairs(&p).is_ok())] += 1;
        }
        // both outcomes occur, so the inputs reach past the first checks
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }
}
