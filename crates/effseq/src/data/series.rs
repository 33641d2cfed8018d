//! Time series stored as CSV with a regular time axis, and the explicit handling of missing values.
//!
//! The loader checks that consecutive rows are exactly one period apart (a year, a week, a day), so a row that
//! is absent from the file is an error rather than a silent shift of the time axis. Missing *values* (empty
//! fields) are handled by [`fill_gaps`]: rows at the very start or end with a missing value are trimmed (the
//! series then starts later or ends earlier, still on a regular axis), and interior gaps are filled by linear
//! interpolation between the observed neighbours. Both are counted in a [`GapReport`].

use std::path::Path;

use crate::data::csv::read_csv;
use crate::data::data_error;
use crate::error::Result;

/// How a time column is written and how far apart consecutive rows must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeAxis {
    /// An integer year; consecutive rows one year apart.
    Year,
    /// `YYYYMMDD` dates; consecutive rows `days` days apart.
    CompactDate { days: i64 },
    /// `YYYY-MM-DD` dates; consecutive rows `days` days apart.
    IsoDate { days: i64 },
}

impl TimeAxis {
    /// The position of `text` on the axis (a year, or days since 1970-01-01), `None` when malformed.
    pub fn parse(self, text: &str) -> Option<i64> {
        match self {
            TimeAxis::Year => text.parse().ok(),
            TimeAxis::CompactDate { .. } => {
                let digits = text.as_bytes();
                if digits.len() != 8 || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                days_from_civil(text[..4].parse().ok()?, text[4..6].parse().ok()?, text[6..].parse().ok()?)
            }
            TimeAxis::IsoDate { .. } => {
                let mut parts = text.split('-');
                let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
                    return None;
                }
                days_from_civil(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
            }
        }
    }

    /// Distance between consecutive rows, in the unit of [`TimeAxis::parse`].
    pub fn period(self) -> i64 {
        match self {
            TimeAxis::Year => 1,
            TimeAxis::CompactDate { days } | TimeAxis::IsoDate { days } => days,
        }
    }

    /// The unit of [`TimeAxis::period`], for messages.
    fn unit(self) -> &'static str {
        match self {
            TimeAxis::Year => "years",
            _ => "days",
        }
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d` (H. Hinnant, "chrono-Compatible Low-Level Date
/// Algorithms", `days_from_civil`); `None` for a month outside 1..=12 or a day outside the month.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    Some(era * 146_097 + doe - 719_468)
}

/// Which columns of a CSV file (with a header) make a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesSpec {
    /// Header name of the time column.
    pub time_column: String,
    /// Format and spacing of the time column.
    pub axis: TimeAxis,
    /// Header names of the numeric columns, in the order of the series' features.
    pub value_columns: Vec<String>,
}

/// What [`fill_gaps`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GapReport {
    /// Missing values filled by linear interpolation (over all features).
    pub interpolated: usize,
    /// Number of interior gaps (runs of consecutive missing values of one feature).
    pub gaps: usize,
    /// Length of the longest interior gap.
    pub longest_gap: usize,
    /// Rows dropped at the start because a value was missing there (nothing to interpolate from).
    pub trimmed_start: usize,
    /// Rows dropped at the end for the same reason.
    pub trimmed_end: usize,
}

impl GapReport {
    /// One line for a log, e.g. `59 missing values in 22 gaps (longest 18) linearly interpolated`.
    pub fn describe(&self) -> String {
        let mut text = if self.interpolated == 0 {
            "no missing values".to_string()
        } else {
            format!("{} missing values in {} gaps (longest {}) linearly interpolated", self.interpolated, self.gaps, self.longest_gap)
        };
        if self.trimmed_start + self.trimmed_end > 0 {
            text += &format!(", {} leading and {} trailing rows with missing values trimmed", self.trimmed_start, self.trimmed_end);
        }
        text
    }
}

/// A regular multivariate time series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Feature names, `(D)`.
    pub names: Vec<String>,
    /// `(T, D)` values, gaps filled.
    pub values: Vec<f32>,
    /// `(T, D)`: true where the value was interpolated rather than observed.
    pub interpolated: Vec<bool>,
    /// The time label of each row, `(T)`, as written in the file.
    pub times: Vec<String>,
    /// How missing values were handled.
    pub gaps: GapReport,
}

impl Series {
    /// T, the number of time steps.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// True when the series has no time step.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// D, the features per step.
    pub fn dim(&self) -> usize {
        self.names.len()
    }

    /// Feature `d` over time, `(T)`.
    pub fn column(&self, d: usize) -> Vec<f32> {
        self.values.iter().skip(d).step_by(self.dim()).copied().collect()
    }
}

/// Reads the series `spec` from the CSV file `path`: the time column must advance by exactly one period per
/// row (an absent row is an [`crate::Error::Data`] naming its line), empty value fields are missing values
/// handled by [`fill_gaps`], and anything else that is not a finite number is an error naming its line.
pub fn load_series(path: &Path, spec: &SeriesSpec) -> Result<Series> {
    let csv = read_csv(path, true)?;
    let time_col = csv.column_index(&spec.time_column)?;
    let value_cols = spec.value_columns.iter().map(|name| csv.column_index(name)).collect::<Result<Vec<_>>>()?;
    let dim = value_cols.len();
    let mut raw = Vec::with_capacity(csv.rows.len() * dim); // (T, D), None where missing
    let mut times = Vec::with_capacity(csv.rows.len());
    let mut previous: Option<(i64, &str)> = None;
    for row in &csv.rows {
        let label = row.fields[time_col].as_str();
        let Some(at) = spec.axis.parse(label) else {
            return Err(data_error(path, Some(row.line), format!("column '{}': '{label}' is not a valid time for {:?}", spec.time_column, spec.axis)));
        };
        if let Some((before, before_label)) = previous {
            if at - before != spec.axis.period() {
                return Err(data_error(
                    path,
                    Some(row.line),
                    format!(
                        "time {label} is {} {} after the previous row's {before_label}, expected {}: rows must be consecutive \
                         (leave the value empty for a missing observation instead of dropping the row)",
                        at - before,
                        spec.axis.unit(),
                        spec.axis.period()
                    ),
                ));
            }
        }
        previous = Some((at, label));
        for &col in &value_cols {
            raw.push(csv.parse_optional_f32(row, col)?);
        }
        times.push(label.to_string());
    }
    let (values, interpolated, gaps, kept) = fill_gaps(&raw, dim).map_err(|msg| data_error(path, None, msg))?;
    Ok(Series { names: spec.value_columns.clone(), values, interpolated, times: times[kept].to_vec(), gaps })
}

/// The filled `(T', D)` values, the `(T', D)` mask of interpolated values, the report, and the range of the
/// input rows kept (`T'` rows).
pub type Filled = (Vec<f32>, Vec<bool>, GapReport, std::ops::Range<usize>);

/// Fills the missing values (`None`) of the `(T, D)` series `raw`: rows before the first and after the last row
/// with every value present are trimmed, and each interior run of missing values of a feature is replaced by
/// the straight line between the observed values on either side: `v[i] = v[a] + (v[b] - v[a]) (i - a) / (b - a)`.
/// An error message when no row has every value.
pub fn fill_gaps(raw: &[Option<f32>], dim: usize) -> std::result::Result<Filled, String> {
    let rows = raw.len().checked_div(dim).unwrap_or(0);
    if dim == 0 || rows * dim != raw.len() {
        return Err(format!("{} values do not form rows of {dim} features", raw.len()));
    }
    let complete = |t: usize| raw[t * dim..(t + 1) * dim].iter().all(Option::is_some);
    let Some(first) = (0..rows).find(|&t| complete(t)) else {
        return Err(format!("none of the {rows} rows has every value present"));
    };
    // `first` exists, so a last complete row does too.
    let last = (0..rows).rev().find(|&t| complete(t)).unwrap_or(first);
    let kept = first..last + 1;
    let len = kept.len();
    let mut values = vec![0.0f32; len * dim]; // (T', D)
    let mut interpolated = vec![false; len * dim]; // (T', D)
    let mut report = GapReport { trimmed_start: first, trimmed_end: rows - 1 - last, ..GapReport::default() };
    for d in 0..dim {
        let at = |t: usize| raw[(first + t) * dim + d];
        // Index (in the kept rows) and value of the previous observation. The first and last kept rows are
        // complete, so every missing value lies between two observations.
        let mut anchor: Option<(usize, f32)> = None;
        for t in 0..len {
            let Some(v) = at(t) else { continue };
            if let Some((a, va)) = anchor {
                let gap = t - a - 1;
                if gap > 0 {
                    for i in a + 1..t {
                        let frac = (i - a) as f32 / (t - a) as f32;
                        values[i * dim + d] = va + (v - va) * frac;
                        interpolated[i * dim + d] = true;
                    }
                    report.interpolated += gap;
                    report.gaps += 1;
                    report.longest_gap = report.longest_gap.max(gap);
                }
            }
            values[t * dim + d] = v;
            anchor = Some((t, v));
        }
    }
    Ok((values, interpolated, report, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2012, 3, 1).unwrap() - days_from_civil(2012, 2, 28).unwrap(), 2, "2012 is a leap year");
        assert_eq!(days_from_civil(1900, 2, 29), None, "1900 is not");
        assert_eq!(days_from_civil(2000, 13, 1), None);
        assert_eq!(TimeAxis::CompactDate { days: 7 }.parse("19580405"), Some(TimeAxis::CompactDate { days: 7 }.parse("19580329").unwrap() + 7));
        assert_eq!(TimeAxis::IsoDate { days: 1 }.parse("2012-01-32"), None);
        assert_eq!(TimeAxis::IsoDate { days: 1 }.parse("2012-1-3"), None);
    }

    #[test]
    fn interior_gaps_are_interpolated_and_counted() {
        let raw = [None, Some(1.0), None, None, Some(4.0), Some(5.0), None, Some(9.0), None];
        let (values, mask, report, kept) = fill_gaps(&raw, 1).unwrap();
        assert_eq!(kept, 1..8);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0]);
        assert_eq!(mask, vec![false, true, true, false, false, true, false]);
        assert_eq!(report, GapReport { interpolated: 3, gaps: 2, longest_gap: 2, trimmed_start: 1, trimmed_end: 1 });
        assert!(report.describe().contains("3 missing values in 2 gaps"), "{}", report.describe());
    }

    #[test]
    fn multivariate_gaps_fill_per_feature() {
        // Rows: (1, 10), (_, 20), (3, _), (4, 40).
        let raw = [Some(1.0), Some(10.0), None, Some(20.0), Some(3.0), None, Some(4.0), Some(40.0)];
        let (values, _, report, _) = fill_gaps(&raw, 2).unwrap();
        assert_eq!(values, vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
        assert_eq!((report.interpolated, report.gaps), (2, 2));
        assert!(fill_gaps(&[None, Some(1.0), Some(2.0), None], 2).is_err(), "no complete row");
    }

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("series.csv");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn co2_spec() -> SeriesSpec {
        SeriesSpec { time_column: "date".into(), axis: TimeAxis::CompactDate { days: 7 }, value_columns: vec!["co2".into()] }
    }

    #[test]
    fn load_series_with_gaps_keeps_the_time_axis() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "date,co2\n19580329,316.0\n19580405,\n19580412,\n19580419,319.0\n19580426,320\n");
        let series = load_series(&path, &co2_spec()).unwrap();
        assert_eq!(series.len(), 5);
        assert_eq!(series.values, vec![316.0, 317.0, 318.0, 319.0, 320.0]);
        assert_eq!(series.times[2], "19580412");
        assert_eq!(series.gaps.interpolated, 2);
        assert_eq!(series.column(0), series.values);
    }

    #[test]
    fn absent_rows_and_bad_values_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "date,co2\n19580329,316.0\n19580405,317\n19580419,319.0\n");
        let err = load_series(&path, &co2_spec()).unwrap_err();
        assert!(matches!(&err, Error::Data { line: Some(4), .. }), "{err:?}");
        assert!(err.to_string().contains("14 days after"), "{err}");

        let path = write(dir.path(), "date,co2\n19580329,316.0\n19580405,3x7\n");
        assert!(matches!(load_series(&path, &co2_spec()), Err(Error::Data { line: Some(3), .. })));
        let path = write(dir.path(), "date,co2\n19580329,316.0\n1958-04-05,317\n");
        assert!(matches!(load_series(&path, &co2_spec()), Err(Error::Data { line: Some(3), .. })));
        let path = write(dir.path(), "date,co2\n19580329,316.0\n19580405\n");
        assert!(matches!(load_series(&path, &co2_spec()), Err(Error::Data { line: Some(3), .. })));
        let path = write(dir.path(), "when,co2\n19580329,316.0\n");
        assert!(matches!(load_series(&path, &co2_spec()), Err(Error::Data { line: Some(1), .. })));
        let path = write(dir.path(), "date,co2\n19580329,\n19580405,\n");
        assert!(load_series(&path, &co2_spec()).unwrap_err().to_string().contains("none of the 2 rows"));
    }
}
