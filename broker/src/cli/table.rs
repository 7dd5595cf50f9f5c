//! Columns aligned to their widest cell, for the listing commands.

use std::fmt::Write as _;

#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row, then rows of cells, each followed by its notes (lines
/// indented by two spaces, outside the columns). The last column is not padded.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it has as many cells as there are columns.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push((cells, Vec::new()));
    }

    /// Adds a note under the last row.
    pub fn note(&mut self, line: String) {
        if let Some((_, notes)) = self.rows.last_mut() {
            notes.push(line);
        }
    }

    /// The table, one line per row (header first), columns two spaces apart, each row
    /// followed by its notes.
    pub fn render(&self) -> Vec<String> {
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let none = Vec::new();
        let rows = std::iter::once((&header, &none)).chain(self.rows.iter().map(|(r, n)| (r, n)));
        let mut widths = vec![0; self.columns.len()];
        for (row, _) in rows.clone() {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let last = self.columns.len().saturating_sub(1);
        let mut lines = Vec::new();
        for (row, notes) in rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let width = widths[i];
                match (self.columns[i].1, i == last) {
                    (Align::Left, true) => line.push_str(cell),
                    (Align::Left, false) => write!(line, "{cell:<width$}").unwrap(),
                    (Align::Right, _) => write!(line, "{cell:>width$}").unwrap(),
                }
            }
            lines.push(line.trim_end().to_owned());
            lines.extend(notes.iter().map(|note| format!("  {note}")));
        }
        lines
    }

    pub fn print(&self) {
        for line in self.render() {
            println!("{line}");
        }
    }
}

/// A call-time p99 from the broker's histogram (the upper edge of a power-of-two bucket,
/// in microseconds) as the bound it is, rounded: `≤16.8ms`, `≤524us`, `-` when unknown.
pub fn p99(us: Option<f64>) -> String {
    match us {
        None => "-".to_owned(),
        Some(us) if us >= 1000.0 => format!("≤{:.1}ms", us / 1000.0),
        Some(us) if us >= 10.0 => format!("≤{}us", us.round()),
        Some(us) => format!("≤{us:.1}us"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&[
            ("QUEUE", Align::Left),
            ("N", Align::Right),
            ("CONFIG", Align::Left),
        ]);
        t.row(vec![
            "a-very-long-queue-name".into(),
            "7".into(),
            "x=1".into(),
        ]);
        t.note("refused".into());
        t.row(vec!["q".into(), "123456".into(), "".into()]);
        let lines = t.render();
        assert_eq!(lines[0], "QUEUE                        N  CONFIG");
        assert_eq!(lines[1], "a-very-long-queue-name       7  x=1");
        assert_eq!(lines[2], "  refused");
        assert_eq!(lines[3], "q                       123456");
    }

    #[test]
    fn p99_is_a_rounded_bound() {
        assert_eq!(p99(Some(16777.216)), "≤16.8ms");
        assert_eq!(p99(Some(524.288)), "≤524us");
        assert_eq!(p99(Some(0.256)), "≤0.3us");
        assert_eq!(p99(None), "-");
    }
}
