#!/usr/bin/env python3
"""Write tests/fixtures/eval/csv_cases.json: how Python's `csv` module splits text into records,
the reference for the `.csv` and `.tsv` readers of `deberta-embed eval` (src/eval/data.rs).

Standard library only; run with any Python 3 (the version is recorded in the file):

    python3 scripts/make_csv_fixtures.py

Re-running gives a byte-identical file (fixed seed, same Python minor version).

Each case is a text and the records Python reads from it, each as `[line, fields]`:

* `csv`: `csv.reader(io.StringIO(text, newline=""))` (the excel dialect: `"` quoting, `""`
  escapes, line breaks inside quotes, `\\r\\n` / `\\n` / `\\r` line ends);
* `tsv`: the same with `delimiter="\\t", quoting=csv.QUOTE_NONE` (STS-B's `.tsv` is read so);

`line` is where the record starts (1-based; `\\r\\n`, `\\n` and a lone `\\r` each end a line, as
Python counts them), one more than `reader.line_num` after the record before. Rows that are
empty lines (`[]`) or a single empty field (`[""]`, a line holding only `""`) are left out: the
Rust reader skips them, as `csv.DictReader` skips the former and the evaluation reader treats
the latter as blank.

`unclosed` is set where a quoted field is still open at the end of the text: Python then keeps
the rest of the text as the field (and raises "unexpected end of data" with `strict=True`), the
Rust reader rejects the file naming the line where the quote opened (`unclosed_line`).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eval" / "csv_cases.json"


def line_breaks(s: str) -> int:
    """Line ends in `s` (`\\r\\n`, `\\n`, a lone `\\r`), as Python's universal newlines count them."""
    return sum(line.endswith(("\n", "\r")) for line in io.StringIO(s, newline="").readlines())


def rows(text: str, **fmt) -> list:
    return list(csv.reader(io.StringIO(text, newline=""), **fmt))


def ends_in_quotes(text: str, **fmt) -> bool:
    """Whether a quoted field is still open at the end of `text`.

    `strict=True` says so ("unexpected end of data") unless it stops earlier at text after a
    closing quote; then: appending a line break and `x` gives a last record `["x"]` exactly when
    every quote was closed (an open field swallows both, and then holds a line break)."""
    try:
        for _ in csv.reader(io.StringIO(text, newline=""), strict=True, **fmt):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            return True
        if "expected after" not in str(e):
            raise
    else:
        return False
    return rows(text + "\nx", **fmt)[-1] != ["x"]


def read(text: str, **fmt) -> dict:
    reader = csv.reader(io.StringIO(text, newline=""), **fmt)
    every, prev_line = [], 0
    for row in reader:
        every.append([prev_line + 1, row])
        prev_line = reader.line_num
    records = [r for r in every if r[1] not in ([], [""])]
    case = {"text": text, "records": records, "unclosed": ends_in_quotes(text, **fmt)}
    if case["unclosed"]:
        # the open field is the last one of the last record
        start, fields = every[-1]
        case["unclosed_line"] = start + sum(line_breaks(f) for f in fields[:-1])
    return case


def self_check() -> None:
    """The fallback of `ends_in_quotes` agrees with `strict=True` wherever that gives a verdict."""
    rng = random.Random(7)
    checked = 0
    for _ in range(20000):
        text = random_text(rng, 'ab,""\r\n x')
        try:
            for _ in csv.reader(io.StringIO(text, newline=""), strict=True):
                pass
            strict = False
        except csv.Error as e:
            if "unexpected end of data" not in str(e):
                continue
            strict = True
        assert (rows(text + "\nx")[-1] != ["x"]) == strict, repr(text)
        checked += 1
    assert checked > 10000, checked


CSV_NAMED = {
    "plain": "a,b,c\n1,2,3\n",
    "no_final_newline": "a,b\n1,2",
    "crlf": "a,b\r\n1,2\r\n3,4\r\n",
    "lone_cr": "a,b\r1,2\r3,4\r",
    "mixed_line_ends": "a,b\r\n1,2\n3,4\r5,6",
    "quoted_delimiter": 'a,b\n"x, y",2\n',
    "escaped_quotes": 'a,b\n"say ""hi""",2\n',
    "newline_in_quotes": 'a,b\n"two\nlines",2\n3,4\n',
    "crlf_in_quotes": 'a,b\r\n"two\r\nlines",2\r\n3,4\r\n',
    "cr_in_quotes": 'a,b\r"x\ry",2\r3,4',
    "several_quoted_lines": 'a,b,c\n"1\n2","3\n\n4",5\n6,7,8\n',
    "quote_inside_unquoted": 'a,b\nx"y,2\n',
    "text_after_closing_quote": 'a,b\n"ab"cd,2\n',
    "quote_after_space": 'a,b\n "x",2\n',
    "empty_quoted_field": 'a,b\n1,""\n"",2\n',
    "only_empty_quotes_line": 'a,b\n""\n1,2\n',
    "blank_lines": "\n\na,b\n\n\n1,2\n\n",
    "blank_crlf_lines": "\r\n\r\na,b\r\n\r\n1,2\r\n",
    "whitespace_line": "a,b\n  \n1,2\n",
    "ragged_rows": "a,b,c\n1,2\n3,4,5,6\n7\n",
    "empty_fields": "a,b,c\n,,\n,x,\n",
    "tab_in_field": "a,b\nx\ty,2\n",
    "unicode": 'a,b\n"é, ñ",日本\n🍕,"x\n🚀"\n',
    "nul_byte": "a,b\n1,x\x00y\n",
    "empty": "",
    "only_newlines": "\n\r\n\r",
    "unclosed_last_line": 'a,b\n"open,1\n',
    "unclosed_after_quoted_newline": 'a,b\n"x\ny","open\n',
    "unclosed_after_escaped_quote": 'a,b\n1,"x""\n',
    "unclosed_at_first_byte": '"',
    "closed_at_end_of_text": 'a,b\n1,"x"',
    "sentinel_like_last_record": "a\nx",
    "sentinel_like_field": 'a\n"\nx',
}

TSV_NAMED = {
    "plain": "s1\ts2\tscore\na\tb\t1\n",
    "quotes_are_literal": 's1\ts2\tscore\n"a"\tb, c\t1\n"open\tx\t2\n',
    "crlf": "s1\ts2\r\na\tb\r\n",
    "lone_cr": "s1\ts2\ra\tb\r",
    "blank_lines": "\ns1\ts2\n\n\na\tb\n\n",
    "ragged_rows": "s1\ts2\tscore\na\tb\nc\td\te\tf\n",
    "empty_fields": "s1\ts2\n\t\n\tx\n",
    "trailing_space": "s1\ts2\na \t b \n",
    "commas": "s1\ts2\na,b\tc,d\n",
    "empty": "",
}


def random_text(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def main() -> None:
    self_check()
    rng = random.Random(20261207)
    csv_cases = [dict(name=n, **read(t)) for n, t in CSV_NAMED.items()]
    for i in range(600):
        csv_cases.append(dict(name=f"random_{i}", **read(random_text(rng, 'ab,,""\r\n\n \tx'))))
    tsv = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    tsv_cases = [dict(name=n, **read(t, **tsv)) for n, t in TSV_NAMED.items()]
    for i in range(300):
        tsv_cases.append(dict(name=f"random_{i}", **read(random_text(rng, 'ab,"\t\t\r\n\n x'), **tsv)))
    out = {
        "source": f"Python {platform.python_version()} csv module, scripts/make_csv_fixtures.py",
        "csv": csv_cases,
        "tsv": tsv_cases,
    }
    # one case per line
    lines = ["{", f'"source": {json.dumps(out["source"])},']
    for key in ("csv", "tsv"):
        cases = [json.dumps(c, ensure_ascii=False) for c in out[key]]
        lines.append(f'"{key}": [\n' + ",\n".join(cases) + "\n]" + ("," if key == "csv" else ""))
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    n_unclosed = sum(c["unclosed"] for c in csv_cases)
    print(f"wrote {OUT.name}: {len(csv_cases)} csv cases ({n_unclosed} unclosed), {len(tsv_cases)} tsv cases")


if __name__ == "__main__":
    main()
