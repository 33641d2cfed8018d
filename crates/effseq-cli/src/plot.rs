//! Charts of `effseq bench` and `effseq compare` (SVG or PNG, by the file's extension), drawn with `plotters`.
//!
//! `effseq compare` draws one panel ([`write_compare_plot`]): the test metric of every model against its training
//! time, one line per model through its evaluations; the y axis is logarithmic for a lower-is-better metric that
//! spans more than a decade (an MSE falling from 0.17 to 0.001), linear otherwise (accuracy, bits per character).
//!
//! `effseq bench`:
//! From one path `FILE.ext` three charts are written, each only when the records hold something to draw:
//! - `FILE.ext`: median time of one run against the sequence length T, for the sequence modes (forward, train);
//! - `FILE-memory.ext`: peak extra heap (MiB) against T, for every mode;
//! - `FILE-step.ext`: time of one streaming step (µs) against the context length T.
//!
//! Both axes are logarithmic, so a model whose cost grows as `T^k` draws a straight line of slope `k`: the linear
//! (recurrent, convolutional, linear-attention) and the quadratic (softmax attention) families separate visibly.
//! Panels are laid out as a grid, one column per mode and one row per batch size B, all on the same axes ranges;
//! each model is one line with markers of its own colour and shape, named in the legend at the right. Skipped
//! configurations are not drawn; a note under the panels names them.
//!
//! Text is drawn with the DejaVu Sans font shipped in `assets/` (through `ab_glyph`), so PNGs render the same on
//! every machine, with no system font library.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use effseq::bench::BenchRecord;
use effseq::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// The font that draws every text, registered as plotters' `sans-serif`.
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Font family name used in every text style.
const FONT: &str = "sans-serif";

/// Width of one panel, pixels.
const PANEL_W: u32 = 480;
/// Height of one panel, pixels.
const PANEL_H: u32 = 340;
/// Width of the legend column at the right, pixels.
const LEGEND_W: u32 = 200;
/// Height of the title band, pixels.
const TITLE_H: u32 = 50;
/// Height of the note band under the panels, pixels.
const NOTE_H: u32 = 60;

/// Colours of the models, in order of first appearance (the Tableau 10 palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Number of marker shapes (circle, triangle, square, diamond); model `i` gets shape `i % MARKERS`.
const MARKERS: usize = 4;

/// The image format, chosen by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Scalable vector graphics.
    Svg,
    /// A bitmap, encoded as PNG.
    Png,
}

/// One model's line in one panel: `(T, value)` points sorted by T.
struct Line {
    /// Index of the model in the legend.
    model: usize,
    /// The points.
    points: Vec<(f64, f64)>,
}

/// One panel of a chart.
struct Panel {
    /// Caption, e.g. `forward, B = 8`.
    caption: String,
    /// One line per model with data.
    lines: Vec<Line>,
}

/// A chart: a grid of panels sharing axes, a legend and a note.
struct Chart {
    /// Title over the panels.
    title: String,
    /// X axis description with unit.
    x_desc: &'static str,
    /// Y axis description with unit.
    y_desc: &'static str,
    /// Panels in row-major order, `rows * cols` of them.
    panels: Vec<Panel>,
    /// Panel grid rows.
    rows: usize,
    /// Panel grid columns.
    cols: usize,
    /// Lines of the note under the panels.
    note: Vec<String>,
    /// Every model of the records, indexed by [`Line::model`].
    models: Vec<String>,
}

impl Chart {
    /// Image size in pixels.
    fn size(&self) -> (u32, u32) {
        (self.cols as u32 * PANEL_W + LEGEND_W, TITLE_H + self.rows as u32 * PANEL_H + NOTE_H)
    }

    /// Whether any panel has a point to draw.
    fn has_points(&self) -> bool {
        self.panels.iter().any(|p| p.lines.iter().any(|l| !l.points.is_empty()))
    }

    /// The x and y ranges over every panel, widened by a margin on the log scale; the y range is widened to whole
    /// decades, so that its axis always has at least two labelled powers of 10.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let points = self.panels.iter().flat_map(|p| p.lines.iter().flat_map(|l| l.points.iter()));
        let (mut x, mut y) = ((f64::INFINITY, 0.0f64), (f64::INFINITY, 0.0f64));
        for &(px, py) in points {
            x = (x.0.min(px), x.1.max(px));
            y = (y.0.min(py), y.1.max(py));
        }
        let decade_below = 10f64.powi((y.0 / 1.5).log10().floor() as i32);
        let decade_above = 10f64.powi((y.1 * 1.5).log10().ceil() as i32);
        // A hair outside the decades, so that rounding cannot drop the bounding powers from the tick labels.
        ((x.0 / 1.4, x.1 * 1.4), (decade_below * 0.999, decade_above * 1.001))
    }
}

/// Writes the charts of `records` for the path `FILE.svg` or `FILE.png`: `FILE.ext` (time against length),
/// `FILE-memory.ext` (peak memory against length) and `FILE-step.ext` (step latency against context length),
/// each only when the records hold a measured value for it (memory needs the counting allocator, step needs the
/// `step` mode). Returns the paths written. Each file is written to a temporary file beside it and renamed, so
/// a failure never leaves half a chart. Drawing nothing at all is an [`Error::Invalid`].
pub fn write_bench_plots(records: &[BenchRecord], path: &Path) -> Result<Vec<PathBuf>> {
    let format = format_of(path)?;
    register_shipped_font()?;
    let mut written = Vec::new();
    for (suffix, chart) in [("", time_chart(records)), ("-memory", memory_chart(records)), ("-step", step_chart(records))] {
        if !chart.has_points() {
            continue;
        }
        let target = sibling(path, suffix);
        write_chart(&chart, &target, format)?;
        written.push(target);
    }
    if written.is_empty() {
        return Err(Error::Invalid(format!("nothing to plot in {}: no configuration was measured", path.display())));
    }
    Ok(written)
}

/// Checks that `path` names a chart format (`.svg` or `.png`), before a long benchmark runs.
pub fn check_plot_path(path: &Path) -> Result<()> {
    format_of(path).map(|_| ())
}

/// The format named by the extension of `path`.
fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(Error::Invalid(format!("--plot {}: the file name must end in .svg or .png", path.display()))),
    }
}

/// `dir/stem{suffix}.ext` for `path` = `dir/stem.ext`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}.{ext}"))
}

/// Registers the shipped font as `sans-serif` (once per process).
fn register_shipped_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        Err(Error::Invalid("the font shipped for the charts (assets/DejaVuSans.ttf) could not be read".into()))
    }
}

/// Models in order of first appearance.
fn model_names(records: &[BenchRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        if !names.contains(&r.model) {
            names.push(r.model.clone());
        }
    }
    names
}

/// Distinct batch sizes, ascending.
fn batch_sizes(records: &[BenchRecord]) -> Vec<usize> {
    records.iter().map(|r| r.batch).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Distinct modes accepted by `keep`, in order of first appearance.
fn modes(records: &[BenchRecord], keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records.iter().filter(|r| keep(&r.mode)) {
        if !out.contains(&r.mode) {
            out.push(r.mode.clone());
        }
    }
    out
}

/// Layer widths of the records, e.g. `D = 256`.
fn dims(records: &[BenchRecord]) -> String {
    let dims: BTreeSet<usize> = records.iter().map(|r| r.dim).collect();
    format!("D = {}", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
}

/// A grid with one column per mode and one row per batch size; each panel holds one line per model of the
/// positive values `value(record)` of the measured records.
fn grid(records: &[BenchRecord], modes: &[String], value: impl Fn(&BenchRecord) -> Option<f64>) -> (Vec<Panel>, usize, usize) {
    let models = model_names(records);
    let batches = batch_sizes(records);
    let mut panels = Vec::new();
    for &batch in &batches {
        for mode in modes {
            let lines = (0..models.len())
                .map(|model| {
                    let mut points: Vec<(f64, f64)> = records
                        .iter()
                        .filter(|r| r.skipped.is_none() && r.model == models[model] && &r.mode == mode && r.batch == batch)
                        .filter_map(|r| value(r).filter(|v| v.is_finite() && *v > 0.0).map(|v| (r.seq_len as f64, v)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Line { model, points }
                })
                .filter(|line| !line.points.is_empty())
                .collect();
            panels.push(Panel { caption: format!("{mode}, B = {batch}"), lines });
        }
    }
    (panels, batches.len(), modes.len())
}

/// The note naming the skipped configurations among those `keep` accepts, wrapped into at most three lines.
fn skipped_note(records: &[BenchRecord], keep: impl Fn(&BenchRecord) -> bool) -> Vec<String> {
    let skipped: Vec<String> =
        records.iter().filter(|r| r.skipped.is_some() && keep(r)).map(|r| format!("{} {} B={} T={}", r.model, r.mode, r.batch, r.seq_len)).collect();
    if skipped.is_empty() {
        return vec!["No configuration was skipped.".into()];
    }
    let mut lines = vec![format!("Not drawn, {} skipped configuration(s) (the bench table gives the reasons):", skipped.len())];
    let mut line = String::new();
    for (i, name) in skipped.iter().enumerate() {
        if line.len() + name.len() > 110 {
            if lines.len() == 2 {
                line += &format!("and {} more", skipped.len() - i);
                break;
            }
            lines.push(std::mem::take(&mut line));
        }
        line += name;
        if i + 1 < skipped.len() {
            line += "; ";
        }
    }
    lines.push(line);
    lines
}

/// Median time of one run against T, for the sequence modes.
fn time_chart(records: &[BenchRecord]) -> Chart {
    let modes = modes(records, |m| m != "step");
    let (panels, rows, cols) = grid(records, &modes, |r| r.median_ms);
    Chart {
        title: format!("effseq bench: time per run against sequence length ({}, log-log)", dims(records)),
        x_desc: "sequence length T (tokens)",
        y_desc: "median time per run (ms)",
        panels,
        rows,
        cols,
        note: skipped_note(records, |r| r.mode != "step"),
        models: model_names(records),
    }
}

/// Peak extra heap against T, for every mode.
fn memory_chart(records: &[BenchRecord]) -> Chart {
    let modes = modes(records, |_| true);
    let (panels, rows, cols) = grid(records, &modes, |r| r.peak_bytes.map(|b| b as f64 / (1u64 << 20) as f64));
    Chart {
        title: format!("effseq bench: peak memory against sequence length ({}, log-log)", dims(records)),
        x_desc: "sequence length T (tokens)",
        y_desc: "peak extra heap (MiB)",
        panels,
        rows,
        cols,
        note: skipped_note(records, |_| true),
        models: model_names(records),
    }
}

/// Time of one streaming step against the context length, one panel per batch size.
fn step_chart(records: &[BenchRecord]) -> Chart {
    let steps: Vec<BenchRecord> = records.iter().filter(|r| r.mode == "step").cloned().collect();
    let (column, _, _) = grid(records, &["step".to_string()], |r| r.step_us);
    let cols = column.len().max(1);
    Chart {
        title: format!("effseq bench: streaming step latency against context length ({}, log-log)", dims(&steps)),
        x_desc: "context length T (tokens)",
        y_desc: "time per step (µs)",
        panels: column,
        rows: 1,
        cols,
        note: skipped_note(records, |r| r.mode == "step"),
        models: model_names(records),
    }
}

/// Something drawn into one image: the bench [`Chart`] grid or the [`CompareChart`].
trait Drawable {
    /// Image size in pixels.
    fn pixels(&self) -> (u32, u32);
    /// Draws the whole image on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String>;
}

impl Drawable for Chart {
    fn pixels(&self) -> (u32, u32) {
        self.size()
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        render(root, self)
    }
}

/// Renders `chart` into `path` through a temporary file in the same folder.
fn write_chart(chart: &impl Drawable, path: &Path, format: Format) -> Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The temporary file keeps the extension: the PNG encoder picks the format from it.
    let ext = if format == Format::Svg { "svg" } else { "png" };
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp.{ext}", std::process::id()));
    let size = chart.pixels();
    let drawn = match format {
        Format::Svg => {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            chart.draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
        Format::Png => {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            chart.draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
    };
    if let Err(msg) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, std::io::Error::other(format!("drawing the chart failed: {msg}"))));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A compact tick label: `256`, `4k` (multiples of 1024 from 1024 on), `0.05`, `1e5`.
fn tick_label(v: f64) -> String {
    let rounded = v.round();
    if rounded >= 1024.0 && (v - rounded).abs() < 1e-6 * v && (rounded as u64).is_multiple_of(1024) {
        return format!("{}k", rounded as u64 / 1024);
    }
    if v >= 1e5 || (v > 0.0 && v < 1e-3) {
        return format!("{v:.0e}");
    }
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Draws marker `shape` of `color` centred at the backend pixel `at` on `area` (the whole image).
fn draw_marker<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, shape: usize, at: (i32, i32), color: RGBColor) -> std::result::Result<(), String> {
    let (x, y) = at;
    let style = color.filled();
    let drawn = match shape % MARKERS {
        0 => area.draw(&Circle::new((x, y), 4, style)),
        1 => area.draw(&Polygon::new(vec![(x, y - 5), (x + 5, y + 4), (x - 5, y + 4)], style)),
        2 => area.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], style)),
        _ => area.draw(&Polygon::new(vec![(x, y - 5), (x + 5, y), (x, y + 5), (x - 5, y)], style)),
    };
    drawn.map_err(|e| e.to_string())
}

/// Draws the whole chart on `root`.
fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let (width, height) = chart.size();
    let title_style = TextStyle::from((FONT, 22).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    root.draw_text(&chart.title, &title_style, (width as i32 / 2, TITLE_H as i32 / 2)).map_err(err)?;
    let body = root.margin(TITLE_H, NOTE_H, 0, LEGEND_W);
    let ((x_lo, x_hi), (y_lo, y_hi)) = chart.ranges();
    // Powers of 4 label the usual lengths (256, 1k, 4k, ...) without crowding; short ranges use powers of 2.
    let x_base = if x_hi / x_lo > 64.0 { 4.0 } else { 2.0 };
    for (panel, area) in chart.panels.iter().zip(body.split_evenly((chart.rows, chart.cols))) {
        let mut plot = ChartBuilder::on(&area)
            .caption(&panel.caption, (FONT, 17))
            .margin(8)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((x_lo..x_hi).log_scale().base(x_base), (y_lo..y_hi).log_scale())
            .map_err(err)?;
        plot.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for line in &panel.lines {
            let color = PALETTE[line.model % PALETTE.len()];
            plot.draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2))).map_err(err)?;
            for point in &line.points {
                draw_marker(root, line.model, plot.backend_coord(point), color)?;
            }
        }
        if panel.lines.is_empty() {
            let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
            let (w, h) = area.dim_in_pixel();
            area.draw_text("no measured configuration", &style, (w as i32 / 2, h as i32 / 2)).map_err(err)?;
        }
    }
    // Legend: one entry per model that has a line, at the right of the panels.
    let drawn_models: BTreeSet<usize> = chart.panels.iter().flat_map(|p| p.lines.iter().map(|l| l.model)).collect();
    let entries: Vec<(usize, &str)> = drawn_models.iter().map(|&model| (model, chart.models[model].as_str())).collect();
    draw_legend(root, &entries, (width - LEGEND_W) as i32)?;
    draw_note(root, &chart.note, height)
}

/// The legend in the column from pixel `left` to the right of the image: `models`, then a line, a marker and the
/// name of each `(index, name)`.
fn draw_legend<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, entries: &[(usize, &str)], left: i32) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let legend_x = left + 16;
    let text = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = TITLE_H as i32 + 30;
    root.draw_text("models", &TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center)), (legend_x, y)).map_err(err)?;
    for &(model, name) in entries {
        y += 26;
        let color = PALETTE[model % PALETTE.len()];
        root.draw(&PathElement::new(vec![(legend_x, y), (legend_x + 34, y)], color.stroke_width(2))).map_err(err)?;
        draw_marker(root, model, (legend_x + 17, y), color)?;
        root.draw_text(name, &text, (legend_x + 44, y)).map_err(err)?;
    }
    Ok(())
}

/// The note lines in the band under the panels of an image `height` pixels high.
fn draw_note<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, lines: &[String], height: u32) -> std::result::Result<(), String> {
    let note = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Top));
    for (i, line) in lines.iter().enumerate() {
        root.draw_text(line, &note, (12, (height - NOTE_H) as i32 + 6 + 17 * i as i32)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Width of the `effseq compare` panel, pixels.
const COMPARE_W: u32 = 820;
/// Height of the `effseq compare` panel, pixels.
const COMPARE_H: u32 = 480;
/// Width of the `effseq compare` legend column, pixels: its entries carry the parameter counts.
const COMPARE_LEGEND_W: u32 = 270;

/// One model's line in the [`CompareChart`].
#[derive(Clone, Debug)]
pub struct CurveLine {
    /// The model's name, for the legend.
    pub model: String,
    /// `(seconds of training, metric)` at each evaluation, in time order.
    pub points: Vec<(f64, f64)>,
}

/// The `effseq compare` chart: the test metric of every model against its training time.
#[derive(Clone, Debug)]
pub struct CompareChart {
    /// Title over the panel.
    pub title: String,
    /// The metric's name (`mse`, `accuracy`, `bpc`).
    pub metric: String,
    /// Whether a larger metric is better (names the direction on the y axis).
    pub higher_is_better: bool,
    /// One line per model, in the legend's order (colour `i` for line `i`).
    pub lines: Vec<CurveLine>,
    /// Lines of the note under the panel (at most three fit).
    pub note: Vec<String>,
}

impl CompareChart {
    /// The finite points of every line.
    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.lines.iter().flat_map(|l| l.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite())
    }

    /// Whether the y axis is logarithmic: a lower-is-better metric, positive, spanning more than a decade.
    fn log_y(&self) -> bool {
        let (lo, hi) = self.points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, y)| (lo.min(y), hi.max(y)));
        !self.higher_is_better && lo > 0.0 && hi / lo > 10.0
    }

    /// The x range (from 0) and the y range, with margins; whole decades on a log y axis.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let (mut x_hi, mut y_lo, mut y_hi) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for (x, y) in self.points() {
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        let x_hi = if x_hi > 0.0 { x_hi * 1.05 } else { 1.0 };
        if self.log_y() {
            let below = 10f64.powi(y_lo.log10().floor() as i32);
            let above = 10f64.powi(y_hi.log10().ceil() as i32);
            return ((0.0, x_hi), (below * 0.999, above * 1.001));
        }
        let pad = if y_hi > y_lo { 0.06 * (y_hi - y_lo) } else { 0.1 * y_hi.abs().max(1e-3) };
        ((0.0, x_hi), (y_lo - pad, y_hi + pad))
    }
}

impl Drawable for CompareChart {
    fn pixels(&self) -> (u32, u32) {
        (COMPARE_W + COMPARE_LEGEND_W, TITLE_H + COMPARE_H + NOTE_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let (width, height) = self.pixels();
        let title_style = TextStyle::from((FONT, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw_text(&self.title, &title_style, (width as i32 / 2, TITLE_H as i32 / 2)).map_err(err)?;
        let body = root.margin(TITLE_H, NOTE_H, 0, COMPARE_LEGEND_W);
        let ((x_lo, x_hi), (y_lo, y_hi)) = self.ranges();
        if self.log_y() {
            draw_curves(root, &body, self, x_lo..x_hi, (y_lo..y_hi).log_scale())?;
        } else {
            draw_curves(root, &body, self, x_lo..x_hi, y_lo..y_hi)?;
        }
        let entries: Vec<(usize, &str)> = self.lines.iter().enumerate().filter(|(_, l)| !l.points.is_empty()).map(|(i, l)| (i, l.model.as_str())).collect();
        draw_legend(root, &entries, (width - COMPARE_LEGEND_W) as i32)?;
        draw_note(root, &self.note, height)
    }
}

/// The axes of the compare chart on `area` with the y coordinate `y` (linear or logarithmic), and its lines.
fn draw_curves<DB, Y>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    chart: &CompareChart,
    x: std::ops::Range<f64>,
    y: Y,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let direction = if chart.higher_is_better { "higher" } else { "lower" };
    let y_desc = format!("test {} ({direction} is better)", chart.metric);
    let mut plot = ChartBuilder::on(area).margin(12).x_label_area_size(44).y_label_area_size(72).build_cartesian_2d(x, y).map_err(err)?;
    plot.configure_mesh()
        .x_desc("training time (s, evaluations not counted)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (model, line) in chart.lines.iter().enumerate() {
        let color = PALETTE[model % PALETTE.len()];
        let points: Vec<(f64, f64)> = line.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        plot.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2))).map_err(err)?;
        for point in &points {
            draw_marker(root, model, plot.backend_coord(point), color)?;
        }
    }
    Ok(())
}

/// Writes the compare chart to `path` (`.svg` or `.png`), through a temporary file renamed into place. A chart
/// without a single point is an [`Error::Invalid`].
pub fn write_compare_plot(chart: &CompareChart, path: &Path) -> Result<()> {
    let format = format_of(path)?;
    register_shipped_font()?;
    if chart.points().next().is_none() {
        return Err(Error::Invalid(format!("nothing to plot in {}: no model was evaluated", path.display())));
    }
    write_chart(chart, path, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a linear and a quadratic toy model over 256..16384 tokens, B in {1, 8}, every mode, with one
    /// skipped configuration.
    fn synthetic_records() -> Vec<BenchRecord> {
        let mut records = Vec::new();
        for (model, power) in [("linear_toy", 1), ("quadratic_toy", 2)] {
            for mode in ["forward", "train", "step"] {
                for batch in [1usize, 8] {
                    for seq_len in [256usize, 1024, 4096, 16384] {
                        let t = seq_len as f64 / 256.0;
                        let cost = t.powi(power) * batch as f64 * if mode == "train" { 3.0 } else { 1.0 };
                        let skipped = (model == "quadratic_toy" && mode == "train" && batch == 8 && seq_len == 16384)
                            .then(|| "estimated 1000 s exceeds the time budget of 30 s".to_string());
                        let step_us = (mode == "step").then(|| 5.0 * t.powi(power - 1));
                        records.push(BenchRecord {
                            model: model.into(),
                            mode: mode.into(),
                            batch,
                            seq_len,
                            dim: 64,
                            median_ms: skipped.is_none().then_some(if mode == "step" { step_us.unwrap_or(0.0) / 1e3 } else { 0.5 * cost }),
                            min_ms: None,
                            tokens_per_s: None,
                            step_us: step_us.filter(|_| skipped.is_none()),
                            peak_bytes: skipped.is_none().then_some((cost * 4e6) as u64),
                            skipped,
                        });
                    }
                }
            }
        }
        records
    }

    /// Width and height of a PNG from its IHDR chunk, after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    /// The contents of the `<text>` elements of an SVG, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string())).collect()
    }

    #[test]
    fn svg_charts_name_the_models_axes_and_skipped_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_bench_plots(&synthetic_records(), &dir.path().join("bench.svg")).unwrap();
        let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["bench.svg", "bench-memory.svg", "bench-step.svg"]);
        if let Ok(dir) = std::env::var("EFFSEQ_PLOT_SAMPLES") {
            for path in &written {
                std::fs::copy(path, Path::new(&dir).join(path.file_name().unwrap())).unwrap();
            }
        }
        let read = |i: usize| std::fs::read_to_string(&written[i]).unwrap();
        let (time, memory, step) = (read(0), read(1), read(2));
        for svg in [&time, &memory, &step] {
            assert!(svg.starts_with("<svg") && svg.len() > 10_000, "a non-trivial SVG of {} bytes", svg.len());
            assert!(svg.contains("linear_toy") && svg.contains("quadratic_toy"), "the legend names both models");
            assert!(svg.contains("D = 64"));
        }
        assert!(time.contains("sequence length T (tokens)") && time.contains("median time per run (ms)"));
        assert!(time.contains("forward, B = 1") && time.contains("train, B = 8") && !time.contains("step, B = 1"));
        assert!(time.contains("quadratic_toy train B=8 T=16384"), "the skipped configuration is named");
        assert!(memory.contains("peak extra heap (MiB)") && memory.contains("step, B = 8"));
        assert!(step.contains("context length T (tokens)") && step.contains("time per step (µs)"));
        assert!(step.contains("No configuration was skipped."));
        // The x axis is labelled at the bench lengths.
        let labels = svg_texts(&time);
        assert!(["256", "1k", "4k", "16k", "1", "1000"].iter().all(|l| labels.iter().any(|t| t == l)), "tick labels: {labels:?}");
        // Nothing but the three charts is left in the folder (the temporary files were renamed).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn png_charts_decode_to_their_layout_size_and_show_text() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_bench_plots(&synthetic_records(), &dir.path().join("bench.png")).unwrap();
        assert_eq!(written.len(), 3);
        // Time: 2 modes by 2 batch sizes; memory: 3 modes by 2; step: 2 batch panels in a row.
        let expected = [
            (2 * PANEL_W + LEGEND_W, TITLE_H + 2 * PANEL_H + NOTE_H),
            (3 * PANEL_W + LEGEND_W, TITLE_H + 2 * PANEL_H + NOTE_H),
            (2 * PANEL_W + LEGEND_W, TITLE_H + PANEL_H + NOTE_H),
        ];
        for (path, size) in written.iter().zip(expected) {
            let bytes = std::fs::read(path).unwrap();
            assert!(bytes.len() > 20_000, "{} has {} bytes", path.display(), bytes.len());
            assert_eq!(png_size(&bytes), size);
            let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(image.dimensions(), size);
            if let Ok(dir) = std::env::var("EFFSEQ_PLOT_SAMPLES") {
                std::fs::copy(path, Path::new(&dir).join(path.file_name().unwrap())).unwrap();
            }
            // The title band holds nothing but the title's text: it must have dark pixels.
            let dark_in_title =
                (0..size.0).flat_map(|x| (0..TITLE_H).map(move |y| (x, y))).filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 100)).count();
            assert!(dark_in_title > 500, "title text drawn: {dark_in_title} dark pixels");
            // Both model colours appear (lines and markers).
            for color in [PALETTE[0], PALETTE[1]] {
                assert!(image.pixels().any(|p| p.0 == [color.0, color.1, color.2]), "colour {color:?} drawn");
            }
        }
    }

    #[test]
    fn charts_without_data_are_not_written_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sequence_only: Vec<BenchRecord> =
            synthetic_records().into_iter().filter(|r| r.mode != "step").map(|r| BenchRecord { peak_bytes: None, ..r }).collect();
        let written = write_bench_plots(&sequence_only, &dir.path().join("t.svg")).unwrap();
        assert_eq!(written, vec![dir.path().join("t.svg")], "no memory figures and no step mode: the time chart only");
        let skipped: Vec<BenchRecord> = synthetic_records().into_iter().map(|r| BenchRecord { skipped: Some("too big".into()), ..r }).collect();
        assert!(matches!(write_bench_plots(&skipped, &dir.path().join("s.svg")), Err(Error::Invalid(_))));
        assert!(matches!(write_bench_plots(&synthetic_records(), &dir.path().join("plot.pdf")), Err(Error::Invalid(_))));
        assert!(matches!(write_bench_plots(&synthetic_records(), &dir.path().join("plot")), Err(Error::Invalid(_))));
        // Values within one decade still get two labelled powers of 10 on the y axis.
        let narrow: Vec<BenchRecord> =
            synthetic_records().into_iter().filter(|r| r.model == "linear_toy" && r.mode == "step").map(|r| BenchRecord { peak_bytes: None, ..r }).collect();
        let written = write_bench_plots(&narrow, &dir.path().join("n.svg")).unwrap();
        assert_eq!(written, vec![dir.path().join("n-step.svg")]);
        let labels = svg_texts(&std::fs::read_to_string(&written[0]).unwrap());
        assert!(labels.iter().any(|t| t == "1") && labels.iter().any(|t| t == "10"), "{labels:?}");
        assert_eq!(sibling(Path::new("out/bench.PNG"), "-step"), Path::new("out/bench-step.PNG"));
        assert_eq!(
            (tick_label(256.0), tick_label(4096.0), tick_label(65536.0), tick_label(0.05), tick_label(1e5), tick_label(12.5)),
            ("256".into(), "4k".into(), "64k".into(), "0.05".into(), "1e5".into(), "12.5".into())
        );
    }

    /// A compare chart of two models over three evaluations of `values`.
    fn compare_chart(metric: &str, higher_is_better: bool, values: [f64; 3]) -> CompareChart {
        CompareChart {
            title: "effseq compare: test".into(),
            metric: metric.into(),
            higher_is_better,
            lines: vec![
                CurveLine { model: "lstm_toy".into(), points: vec![(0.0, values[0]), (1.0, values[1]), (2.0, values[2])] },
                CurveLine { model: "gru_toy".into(), points: vec![(0.0, values[0]), (1.5, values[2])] },
            ],
            note: vec!["a note under the panel".into()],
        }
    }

    #[test]
    fn compare_chart_draws_every_model_on_the_scale_its_metric_needs() {
        let mse = compare_chart("mse", false, [1.0, 0.1, 0.001]);
        assert!(mse.log_y(), "a falling error over three decades is drawn on a log axis");
        assert!(!compare_chart("accuracy", true, [0.1, 0.5, 0.9]).log_y());
        assert!(!compare_chart("bpc", false, [4.0, 3.0, 2.5]).log_y(), "within a decade: linear");
        assert_eq!(mse.ranges(), ((0.0, 2.0 * 1.05), (0.001 * 0.999, 1.0 * 1.001)));

        let dir = tempfile::tempdir().unwrap();
        let svg_path = dir.path().join("cmp.svg");
        write_compare_plot(&mse, &svg_path).unwrap();
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        for text in ["lstm_toy", "gru_toy", "test mse (lower is better)", "training time (s, evaluations not counted)", "a note under the panel"] {
            assert!(svg.contains(text), "the SVG shows {text:?}");
        }
        let labels = svg_texts(&svg);
        assert!(["0.001", "0.01", "0.1", "1"].iter().all(|l| labels.iter().any(|t| t == l)), "decade labels: {labels:?}");

        let png_path = dir.path().join("cmp.png");
        write_compare_plot(&compare_chart("accuracy", true, [0.1, 0.5, 0.9]), &png_path).unwrap();
        let bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(png_size(&bytes), (COMPARE_W + COMPARE_LEGEND_W, TITLE_H + COMPARE_H + NOTE_H));
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        for color in [PALETTE[0], PALETTE[1]] {
            assert!(image.pixels().any(|p| p.0 == [color.0, color.1, color.2]), "colour {color:?} drawn");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");

        let empty = CompareChart { lines: vec![CurveLine { model: "x".into(), points: vec![] }], ..mse.clone() };
        assert!(matches!(write_compare_plot(&empty, &dir.path().join("e.svg")), Err(Error::Invalid(_))));
        assert!(matches!(write_compare_plot(&mse, &dir.path().join("c.pdf")), Err(Error::Invalid(_))));
    }
}
