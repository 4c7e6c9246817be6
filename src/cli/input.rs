//! Input sentences for `embed` and `tokenize`, streamed: memory stays bounded whatever the size
//! of the file or of one line.
//!
//! * Text files: one sentence per line (`\n`; a `\r` before it is dropped; a final newline does
//!   not add an empty sentence). While a line is read, every run of two or more word breaks
//!   (space, tab, CR, LF) is shortened to its last character and, once a line holds more than
//!   the tokenizer ever looks at ([`TextTokenizer::scan_limit`] plus a margin), the rest of it
//!   is only checked to be UTF-8, not kept. Neither changes a token id: the tokenizer collapses
//!   such runs itself and never reads past that limit.
//! * JSON lines: a JSON string or an object with a string `"text"` per line (blank lines
//!   skipped); each line is parsed whole, so a line may hold at most [`MAX_JSON_LINE`] bytes.
//!
//! [`TextTokenizer::scan_limit`]: deberta_embed::tokenize::TextTokenizer::scan_limit

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use deberta_embed::tokenize::is_word_break;

/// Longest JSON line accepted.
pub const MAX_JSON_LINE: usize = 64 << 20;

/// How long a text line may get before the rest of it is skipped (`None`: keep it all).
#[derive(Clone, Copy)]
pub struct LineBound {
    /// Bytes of a line kept, not counting shortened whitespace runs.
    pub keep: usize,
    /// Shorten runs of word breaks (only where the tokenizer gives the same ids either way).
    pub squeeze: bool,
}

/// The sentences of an input file (`-`: stdin), one at a time.
pub struct Inputs {
    reader: Box<dyn BufRead>,
    name: String,
    jsonl: bool,
    bound: Option<LineBound>,
    line: usize,
    done: bool,
    /// Total bytes of the file when known (for a progress bar), and bytes read so far.
    pub size: Option<u64>,
    pub read: u64,
}

impl Inputs {
    pub fn open(path: &Path, bound: Option<LineBound>) -> Result<Inputs> {
        let (reader, name, size): (Box<dyn BufRead>, String, Option<u64>) =
            if path == Path::new("-") {
                (
                    Box::new(BufReader::with_capacity(1 << 16, std::io::stdin())),
                    "<stdin>".into(),
                    None,
                )
            } else {
                let f = std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                (
                    Box::new(BufReader::with_capacity(1 << 16, f)),
                    path.display().to_string(),
                    size,
                )
            };
        let jsonl = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson"));
        Ok(Inputs {
            reader,
            name,
            jsonl,
            bound,
            line: 0,
            done: false,
            size,
            read: 0,
        })
    }

    /// Up to `max_lines` sentences, fewer once they hold `max_bytes`; empty at the end.
    pub fn next_chunk(&mut self, max_lines: usize, max_bytes: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_lines && bytes < max_bytes {
            match self.next_sentence()? {
                Some(s) => {
                    bytes += s.len();
                    out.push(s);
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// All remaining sentences (for inputs that are small by nature).
    pub fn read_all(mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(s) = self.next_sentence()? {
            out.push(s);
        }
        Ok(out)
    }

    fn next_sentence(&mut self) -> Result<Option<String>> {
        loop {
            let Some(raw) = self.next_line()? else {
                return Ok(None);
            };
            if !self.jsonl {
                return Ok(Some(raw));
            }
            if raw.trim().is_empty() {
                continue;
            }
            let (name, i) = (&self.name, self.line);
            let v: serde_json::Value = serde_json::from_str(&raw)
                .map_err(|e| anyhow!("{name}: line {i} is not valid JSON ({e})"))?;
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Object(mut o) => match o.remove("text") {
                    Some(serde_json::Value::String(s)) => s,
                    _ => bail!("{name}: line {i} has no string field \"text\""),
                },
                _ => bail!(
                    "{name}: line {i} must be a JSON string or an object with a \"text\" field"
                ),
            };
            return Ok(Some(match self.bound {
                Some(b) => bound_text(&text, b),
                None => text,
            }));
        }
    }

    /// The next line as UTF-8 text (without its `\n` / `\r\n`), bounded as set; `None` at the
    /// end of the input.
    fn next_line(&mut self) -> Result<Option<String>> {
        if self.done {
            return Ok(None);
        }
        self.line += 1;
        let (name, i) = (self.name.clone(), self.line);
        let mut kept: Vec<u8> = Vec::new();
        let mut counted = 0usize; // bytes kept, whitespace runs not counted
        let mut in_run = false;
        let mut skipping = false;
        let mut check = Utf8Check::default();
        let mut any = false;
        let text_bound = if self.jsonl { None } else { self.bound };
        loop {
            let buf = self
                .reader
                .fill_buf()
                .with_context(|| format!("reading {name}"))?;
            if buf.is_empty() {
                self.done = true;
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let (chunk, found_newline) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (&buf[..p], true),
                None => (buf, false),
            };
            if !check.feed(chunk) {
                bail!("{name}: line {i} is not valid UTF-8");
            }
            if self.jsonl {
                if kept.len() + chunk.len() > MAX_JSON_LINE {
                    bail!(
                        "{name}: line {i} is longer than {} MiB (a JSON line is read whole)",
                        MAX_JSON_LINE >> 20
                    );
                }
                kept.extend_from_slice(chunk);
            } else if !skipping {
                for &b in chunk {
                    match text_bound {
                        Some(bd) if bd.squeeze && is_word_break(b) => {
                            // keep at most the run's last two bytes (a final "\r\n")
                            if in_run && kept.len() >= 2 && is_word_break(kept[kept.len() - 2]) {
                                let last = kept.len() - 1;
                                kept[last - 1] = kept[last];
                                kept[last] = b;
                            } else {
                                kept.push(b);
                            }
                            in_run = true;
                        }
                        _ => {
                            kept.push(b);
                            counted += 1;
                            in_run = false;
                        }
                    }
                    if text_bound.is_some_and(|bd| counted >= bd.keep) {
                        skipping = true;
                        break;
                    }
                }
            }
            let used = chunk.len() + usize::from(found_newline);
            self.reader.consume(used);
            self.read += used as u64;
            if found_newline {
                break;
            }
        }
        if !check.finish() {
            bail!("{name}: line {i} is not valid UTF-8");
        }
        if kept.last() == Some(&b'\r') && !skipping {
            kept.pop();
        }
        if skipping {
            // cut at a char boundary (the line itself is valid UTF-8)
            while !kept.is_empty() && std::str::from_utf8(&kept).is_err() {
                kept.pop();
            }
        }
        String::from_utf8(kept)
            .map(Some)
            .map_err(|_| anyhow!("{name}: line {i} is not valid UTF-8"))
    }
}

/// A JSON string bounded like a text line.
fn bound_text(text: &str, b: LineBound) -> String {
    let mut out = String::with_capacity(text.len().min(b.keep + 1024));
    let mut counted = 0;
    let mut run: Vec<char> = Vec::new();
    for c in text.chars() {
        if b.squeeze && c.is_ascii() && is_word_break(c as u8) {
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            let keep = if run.len() >= 2 && run[run.len() - 2..] == ['\r', '\n'] {
                2
            } else {
                1
            };
            out.extend(&run[run.len() - keep..]);
            run.clear();
        }
        if counted >= b.keep {
            return out;
        }
        out.push(c);
        counted += c.len_utf8();
    }
    if !run.is_empty() {
        out.push(run[run.len() - 1]);
    }
    out
}

/// Incremental UTF-8 check over a byte stream cut anywhere.
#[derive(Default)]
struct Utf8Check {
    pending: Vec<u8>,
}

impl Utf8Check {
    /// Feed the next bytes; false once they cannot be UTF-8.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(bytes);
        match std::str::from_utf8(&data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                // an incomplete character at the end: wait for the rest
                self.pending = data[e.valid_up_to()..].to_vec();
                true
            }
            Err(_) => false,
        }
    }

    /// True if nothing incomplete is left over.
    fn finish(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Read an input file whole, as before streaming (for `bench --corpus`).
pub fn read_inputs(path: &Path) -> Result<Vec<String>> {
    Inputs::open(path, None)?.read_all()
}
