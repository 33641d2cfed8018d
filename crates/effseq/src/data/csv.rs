//! A small reader for the comma-separated files in `data/`: no quoting inside fields (the shipped files have
//! none), surrounding double quotes of a whole field are stripped (as in `"YEAR","SUNACTIVITY"`), blank lines
//! are skipped, `\r\n` line ends are accepted, and every row keeps its 1-based line number for error messages.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::data::{data_error, read_text};
use crate::error::{Error, Result};

/// One data row of a CSV file.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// 1-based line number in the (decompressed) file.
    pub line: usize,
    /// The fields, unquoted and trimmed of surrounding spaces.
    pub fields: Vec<String>,
}

/// A parsed CSV file whose rows all have the same number of columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Csv {
    /// The file, for error messages.
    pub path: PathBuf,
    /// Column names from the first line, when the file has a header.
    pub header: Option<Vec<String>>,
    /// The data rows, in file order.
    pub rows: Vec<Row>,
    /// Number of columns of every row.
    pub columns: usize,
}

/// Splits one line into unquoted, trimmed fields.
fn split_fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|field| {
            let field = field.trim();
            field.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(field).to_string()
        })
        .collect()
}

/// Reads `path` (gunzipped when it ends in `.gz`). With `has_header` the first non-blank line names the columns.
/// Every row must have as many fields as the first row (or the header): a row that does not is an
/// [`Error::Data`] with its line number; so is a file without data rows.
pub fn read_csv(path: &Path, has_header: bool) -> Result<Csv> {
    parse_csv(&read_text(path)?, path, has_header)
}

/// [`read_csv`] of a file whose every line must have `columns` fields: the first line that has another number is
/// the one named (without it, a wrong first line would be reported as the second).
pub fn read_csv_columns(path: &Path, has_header: bool, columns: usize) -> Result<Csv> {
    parse_csv_columns(&read_text(path)?, path, has_header, Some(columns))
}

/// [`read_csv`] on text already in memory; `path` names it in errors.
pub fn parse_csv(text: &str, path: &Path, has_header: bool) -> Result<Csv> {
    parse_csv_columns(text, path, has_header, None)
}

/// [`parse_csv`], with every line held to `expected` columns when given (else to the first line's count).
fn parse_csv_columns(text: &str, path: &Path, has_header: bool, expected: Option<usize>) -> Result<Csv> {
    let mut header = None;
    let mut rows = Vec::new();
    let mut columns = expected;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        match columns {
            None => columns = Some(fields.len()),
            Some(n) if n != fields.len() => {
                return Err(data_error(path, Some(line_no), format!("expected {n} comma-separated columns, found {}", fields.len())));
            }
            Some(_) => {}
        }
        if has_header && header.is_none() {
            header = Some(fields);
        } else {
            rows.push(Row { line: line_no, fields });
        }
    }
    let columns = columns.unwrap_or(0);
    if rows.is_empty() {
        return Err(data_error(path, None, "no data rows"));
    }
    Ok(Csv { path: path.to_path_buf(), header, rows, columns })
}

impl Csv {
    /// The index of the column named `name` (the file must have a header).
    pub fn column_index(&self, name: &str) -> Result<usize> {
        let header = self.header.as_ref().ok_or_else(|| data_error(&self.path, None, format!("no header line to find column '{name}' in")))?;
        header.iter().position(|h| h == name).ok_or_else(|| data_error(&self.path, Some(1), format!("no column named '{name}' in the header {header:?}")))
    }

    /// Field `column` of `row` parsed as `T`; a field that does not parse is an [`Error::Data`] naming the line,
    /// the column and the text.
    pub fn parse<T: FromStr>(&self, row: &Row, column: usize, what: &str) -> Result<T> {
        let field = &row.fields[column];
        field.parse::<T>().map_err(|_| self.bad_field(row, column, what))
    }

    /// Field `column` of `row` as a finite `f32`, or `None` when the field is empty (a missing value).
    pub fn parse_optional_f32(&self, row: &Row, column: usize) -> Result<Option<f32>> {
        let field = &row.fields[column];
        if field.is_empty() {
            return Ok(None);
        }
        match field.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.bad_field(row, column, "a finite number (or an empty field for a missing value)")),
        }
    }

    /// The error for a field that is not `what`.
    fn bad_field(&self, row: &Row, column: usize, what: &str) -> Error {
        let name = self.header.as_ref().map(|h| format!(" '{}'", h[column])).unwrap_or_default();
        data_error(&self.path, Some(row.line), format!("column {}{name}: expected {what}, found '{}'", column + 1, row.fields[column]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, header: bool) -> Result<Csv> {
        parse_csv(text, Path::new("test.csv"), header)
    }

    #[test]
    fn header_quotes_blank_lines_and_line_numbers() {
        let csv = parse("\"YEAR\",\"VALUE\"\r\n1700,5\n\n1701, 11.5\n", true).unwrap();
        assert_eq!(csv.header, Some(vec!["YEAR".to_string(), "VALUE".to_string()]));
        assert_eq!(csv.columns, 2);
        assert_eq!(csv.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(csv.rows[1].fields, vec!["1701", "11.5"]);
        assert_eq!(csv.column_index("VALUE").unwrap(), 1);
        assert!(matches!(csv.column_index("nope"), Err(Error::Data { line: Some(1), .. })));
        assert_eq!(csv.parse::<i32>(&csv.rows[0], 0, "a year").unwrap(), 1700);
        assert_eq!(csv.parse_optional_f32(&csv.rows[1], 1).unwrap(), Some(11.5));
    }

    #[test]
    fn a_known_column_count_names_a_wrong_first_line() {
        let err = parse_csv_columns("1,2\n1,2,3\n4,5,6\n", Path::new("t.csv"), false, Some(3)).unwrap_err();
        assert!(matches!(&err, Error::Data { line: Some(1), .. }), "{err:?}");
        assert!(err.to_string().contains("expected 3 comma-separated columns, found 2"), "{err}");
    }

    #[test]
    fn wrong_column_count_names_the_line() {
        let err = parse("a,b\n1,2\n3,4,5\n", true).unwrap_err();
        assert!(matches!(&err, Error::Data { line: Some(3), .. }), "{err:?}");
        assert!(err.to_string().contains("test.csv:3") && err.to_string().contains("expected 2"), "{err}");
    }

    #[test]
    fn bad_number_names_line_column_and_text() {
        let csv = parse("date,co2\n19580329,316.1\n19580405,abc\n19580412,\n19580419,inf\n", true).unwrap();
        let err = csv.parse_optional_f32(&csv.rows[1], 1).unwrap_err();
        assert!(matches!(&err, Error::Data { line: Some(3), .. }), "{err:?}");
        assert!(err.to_string().contains("'co2'") && err.to_string().contains("'abc'"), "{err}");
        assert_eq!(csv.parse_optional_f32(&csv.rows[2], 1).unwrap(), None, "an empty field is a missing value");
        assert!(matches!(csv.parse_optional_f32(&csv.rows[3], 1), Err(Error::Data { line: Some(5), .. })), "non-finite values are rejected");
    }

    #[test]
    fn empty_files_are_errors() {
        assert!(matches!(parse("", false), Err(Error::Data { .. })));
        assert!(matches!(parse("a,b\n\n", true), Err(Error::Data { .. })));
    }
}
