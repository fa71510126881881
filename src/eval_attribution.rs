//! `engram eval --attribution`'s output: per retriever, a Markdown table of the attribution methods (or one JSON
//! object with `--json`), and with `--predictions` every attributed question as a JSON line.

use anyhow::{Context, Result};
use engram::app::App;
use engram::eval::{self, AttributionReport, EvalQuestion};
use engram::qa::Answerer;
use std::path::Path;

/// Scores the attribution methods on the model's answers for each retriever in `names`, and prints the reports.
pub async fn run(
    app: &App,
    names: &[String],
    questions: &[EvalQuestion],
    json: bool,
    predictions: Option<&Path>,
) -> Result<()> {
    let reader = Answerer::new(Some(
        app.generator.clone().ok_or(eval::EvalError::NeedsModel)?,
    ));
    let mut reports = Vec::new();
    for name in names {
        let retriever = app.retrievers.get(name)?;
        let report =
            eval::evaluate_attribution(retriever.as_ref(), questions, &reader, &app.config.qa)
                .await?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
        reports.push(report);
    }
    if let Some(path) = predictions {
        let mut out = String::new();
        for report in &reports {
            for q in &report.per_question {
                let mut line = serde_json::to_value(q)?;
                line["retriever"] = report.retriever.clone().into();
                out.push_str(&serde_json::to_string(&line)?);
                out.push('\n');
            }
        }
        fs_err::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One report as a Markdown table, one row per method.
fn print_table(r: &AttributionReport) {
    println!(
        "{} with {}: {} of {} questions attributed; ContextCite at {} ablations; per question {:.1} s wall, \
         {:.1} s joint scoring, {:.1} s separate scoring",
        r.retriever,
        r.reader,
        r.attributed,
        r.questions,
        r.ablations,
        r.wall_seconds,
        r.joint_seconds,
        r.separate_seconds
    );
    println!(
        "| method | top-1 drop | top-2 drop | top-3 drop | LDS | coalitions | model seconds |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for m in &r.methods {
        let drop = |k: usize| m.drops.get(k).copied().unwrap_or(0.0);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} |",
            m.method,
            drop(0),
            drop(1),
            drop(2),
            m.lds,
            m.coalitions,
            m.seconds
        );
    }
}
