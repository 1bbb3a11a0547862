//! Every table xtask prints (bake summary, images, status, ps, bench): columns aligned by
//! comfy-table, no borders, two spaces between columns, no trailing blanks.

use comfy_table::{presets, ContentArrangement, Table};

/// `header` and `rows` as aligned text, one line per row, ending in a newline.
pub fn render<R, C>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = C>,
    C: IntoIterator,
    C::Item: ToString,
{
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        table.add_row(
            row.into_iter()
                .map(|cell| cell.to_string())
                .collect::<Vec<_>>(),
        );
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let text = super::render(
            &["ROLE", "AMI", "STATE"],
            [
                vec!["prometheus", "ami-1", "up to date"],
                vec!["app", "ami-0123456789abcdef0", "built"],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "AMI"), column(lines[1], "ami-1"));
        assert_eq!(column(lines[0], "AMI"), column(lines[2], "ami-0123"));
        assert_eq!(column(lines[0], "STATE"), column(lines[2], "built"));
        assert!(lines[0].starts_with("ROLE"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
    }
}
