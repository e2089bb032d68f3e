//! Plain-text tables for the terminal: `doctor`'s reports and the admin commands' listings.

/// Lays out `rows` under `header`, left-aligned, columns two spaces apart and as wide as their
/// widest cell (in characters), each line starting with `indent`.
pub fn table(header: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{indent}{}\n", padded.join("  ").trim_end())
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = line(&header);
    for row in rows {
        out += &line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_in_characters() {
        let rows = vec![
            vec!["1".to_owned(), "17µs".to_owned()],
            vec!["1234".to_owned(), "-".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "RTT"], &rows, "  "),
            "  ID    RTT\n  1     17µs\n  1234  -\n"
        );
    }
}
