//! `loss.svg`: the training loss against the step, one line per stage, as a small standalone SVG.

use std::fmt::Write;
use std::path::Path;

use crate::train::LossRow;
use crate::{io_error, DraftError};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 48.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Draws `rows` (steps numbered across stages, in order) to `path`.
pub fn write_loss_svg(path: &Path, rows: &[LossRow]) -> Result<(), DraftError> {
    fs_err::write(path, loss_svg(rows)).map_err(io_error(path))
}

/// The SVG text.
pub fn loss_svg(rows: &[LossRow]) -> String {
    let n = rows.len().max(2) as f64;
    let (lo, hi) = rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
        (lo.min(r.loss), hi.max(r.loss))
    });
    let (lo, hi) = if rows.is_empty() {
        (0.0, 1.0)
    } else {
        (lo, hi.max(lo + 1e-6))
    };
    let x = |i: usize| MARGIN + (WIDTH - 2.0 * MARGIN) * i as f64 / (n - 1.0);
    let y = |l: f64| HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * (l - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN}\" y=\"20\">draft training loss (cross-entropy, nats) by step</text>\n\
         <text x=\"4\" y=\"{:.1}\">{hi:.2}</text><text x=\"4\" y=\"{:.1}\">{lo:.2}</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\">{} steps</text>\n",
        MARGIN + 4.0,
        HEIGHT - MARGIN,
        WIDTH - MARGIN - 60.0,
        HEIGHT - 16.0,
        rows.len()
    );
    let mut stages: Vec<&str> = Vec::new();
    for r in rows {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    for (s, stage) in stages.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let points: Vec<String> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.stage == *stage)
            .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.loss)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{stage}</text>",
            points.join(" "),
            WIDTH - MARGIN - 80.0,
            MARGIN + 16.0 * (s as f64 + 1.0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_stage() {
        let row = |stage: &str, step, loss| LossRow {
            stage: stage.into(),
            step,
            loss,
            lr: 0.0,
            grad_norm: 0.0,
        };
        let svg = loss_svg(&[
            row("pretrain", 1, 5.0),
            row("pretrain", 2, 4.0),
            row("align", 1, 3.0),
        ]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">pretrain<") && svg.contains(">align<"));
        assert!(loss_svg(&[]).ends_with("</svg>\n"));
    }
}
