//! Result tables: printed as Markdown, written as CSV and Markdown files, rewritten after
//! every row so that a long run that is stopped keeps what it measured.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A table of results.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// The table as GitHub Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        out.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| "---|").collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }

    /// The table as CSV (cells with commas or quotes are quoted).
    pub fn csv(&self) -> String {
        let line = |cells: &[String]| {
            cells
                .iter()
                .map(|c| {
                    if c.contains([',', '"', '\n']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = line(&self.headers);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// Writes `<dir>/<name>.csv` and `<dir>/<name>.md`; returns the CSV path.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let csv = dir.join(format!("{name}.csv"));
        std::fs::write(&csv, self.csv())
            .map_err(|e| Error::io(format!("writing {}", csv.display()), e))?;
        let md = dir.join(format!("{name}.md"));
        std::fs::write(&md, self.markdown())
            .map_err(|e| Error::io(format!("writing {}", md.display()), e))?;
        Ok(csv)
    }
}

/// The cells of one CSV line as [`Table::csv`] writes it (quotes doubled inside quoted cells).
pub fn parse_csv_line(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            _ => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

/// A number with `digits` decimals, or `-` when absent.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_and_quoted_csv() {
        let mut t = Table::new(&["a", "b"]);
        t.rows.push(vec!["1".into(), "x, \"y\"".into()]);
        assert_eq!(t.markdown(), "| a | b |\n|---|---|\n| 1 | x, \"y\" |\n");
        assert_eq!(t.csv(), "a,b\n1,\"x, \"\"y\"\"\"\n");
        let line = t.csv().lines().nth(1).unwrap().to_owned();
        assert_eq!(parse_csv_line(&line), t.rows[0]);
        assert_eq!(num(None, 2), "-");
        assert_eq!(num(Some(1.234), 1), "1.2");
    }
}
