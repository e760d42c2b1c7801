//! The HTML index of a run directory: summary, the failure in full, charts and files, linked.
//!
//! Charts are shown at the full content width (1,000 px, the width they are drawn at), so their
//! 14 px axis text reads at normal zoom.

use std::fmt::Write as _;

/// One sector that held a value no rule allows, as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SectorRow {
    /// Guest sector.
    pub sector: u64,
    /// Values it could legally hold.
    pub allowed: Vec<String>,
    /// What it held.
    pub actual: String,
}

/// A failure of this run, shown in full at the top of the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureDetail {
    /// Failure class (`wrong-data`, `check`, ...).
    pub class: String,
    /// One-line message.
    pub message: String,
    /// Where it was found (request, crashes before it).
    pub context: String,
    /// Failing sectors.
    pub sectors: Vec<SectorRow>,
    /// The command that replays it.
    pub repro_command: String,
    /// The failure file, relative to the page.
    pub file: String,
}

/// What the index shows.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Page title.
    pub title: String,
    /// `(name, value)` rows of the summary table.
    pub summary: Vec<(String, String)>,
    /// Tables after the summary (sortable by a click on a column's name).
    pub tables: Vec<crate::campaign::Table>,
    /// `(caption, file)` of each chart (relative paths).
    pub charts: Vec<(String, String)>,
    /// This run's failure, in full.
    pub failure: Option<FailureDetail>,
    /// `(description, file)` of each failure file.
    pub failures: Vec<(String, String)>,
    /// Other files to link: `(description, file)`.
    pub files: Vec<(String, String)>,
}

/// `text` with the HTML special characters escaped.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;font-size:16px;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}\
figure{margin:1.5em 0}figure img{display:block;width:100%;height:auto;border:1px solid #eee}\
figcaption{margin-top:0.4em;color:#444}\
.fail{color:#b00}.failure{border:2px solid #b00;border-radius:6px;padding:0.5em 1.2em;margin:1em 0;background:#fff7f7}\
.failure h2{color:#b00;margin-top:0.4em}.failure td,.failure th{font-family:monospace;font-size:14px}\
pre{background:#f4f4f4;padding:0.6em 1em;overflow-x:auto;font-size:15px}";

fn render_failure(html: &mut String, failure: &FailureDetail) {
    let _ = writeln!(
        html,
        "<section class=\"failure\" id=\"failure\">\n<h2>Failure: {}</h2>\n<p class=\"fail\"><strong>{}</strong></p>",
        escape(&failure.class),
        escape(&failure.message)
    );
    if !failure.context.is_empty() {
        let _ = writeln!(html, "<p>{}</p>", escape(&failure.context));
    }
    if failure.sectors.is_empty() {
        html.push_str("<p>No failing sectors: this failure names no sector.</p>\n");
    } else {
        let _ = writeln!(
            html,
            "<h3>Failing sectors ({})</h3>\n<table>\n<tr><th>sector</th><th>allowed values</th><th>actual</th></tr>",
            failure.sectors.len()
        );
        for row in &failure.sectors {
            let allowed = if row.allowed.is_empty() {
                "(none)".to_string()
            } else {
                row.allowed.iter().map(|a| escape(a)).collect::<Vec<_>>().join("<br>")
            };
            let _ =
                writeln!(html, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", row.sector, allowed, escape(&row.actual));
        }
        html.push_str("</table>\n");
    }
    let _ = writeln!(
        html,
        "<h3>Reproduce</h3>\n<pre><code>{}</code></pre>\n<p>The failure file <a href=\"{1}\">{1}</a> holds the configuration with its crash schedule, the build commit and the last events of the log.</p>\n</section>",
        escape(&failure.repro_command),
        escape(&failure.file)
    );
}

/// Renders the index page.
pub fn render_index(index: &Index) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{0}</title>\n<style>{STYLE}</style></head><body>\n<h1>{0}</h1>\n",
        escape(&index.title)
    );
    if let Some(failure) = &index.failure {
        render_failure(&mut html, failure);
    }
    html.push_str("<h2>Summary</h2>\n<table>\n");
    for (name, value) in &index.summary {
        let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
    }
    html.push_str("</table>\n");
    for table in &index.tables {
        crate::campaign::push_table(&mut html, table);
    }
    html.push_str("<h2>Failure files</h2>\n");
    if index.failures.is_empty() {
        html.push_str("<p>None: every check passed.</p>\n");
    } else {
        html.push_str("<ul>\n");
        for (description, file) in &index.failures {
            let _ = writeln!(
                html,
                "<li class=\"fail\"><a href=\"{}\">{}</a>: {}</li>",
                escape(file),
                escape(file),
                escape(description)
            );
        }
        html.push_str("</ul>\n");
    }
    if !index.charts.is_empty() {
        html.push_str("<h2>Charts</h2>\n");
        for (caption, file) in &index.charts {
            let _ = writeln!(
                html,
                "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>",
                escape(file),
                escape(caption)
            );
        }
    }
    push_files(&mut html, &index.files);
    html.push_str("</body></html>\n");
    html
}

/// The "Files" section: `(description, file)` links, nothing when there are none.
pub(crate) fn push_files(html: &mut String, files: &[(String, String)]) {
    if files.is_empty() {
        return;
    }
    html.push_str("<h2>Files</h2>\n<ul>\n");
    for (description, file) in files {
        let _ = writeln!(html, "<li><a href=\"{0}\">{0}</a>: {1}</li>", escape(file), escape(description));
    }
    html.push_str("</ul>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_links_charts_and_failures_and_escapes_text() {
        let index = Index {
            title: "run <1>".into(),
            summary: vec![("seed".into(), "0x1".into())],
            charts: vec![("latency".into(), "latency.svg".into())],
            failures: vec![("wrong data".into(), "failure-1.json".into())],
            files: vec![("report".into(), "report.json".into())],
            failure: None,
            tables: Vec::new(),
        };
        let html = render_index(&index);
        assert!(html.contains("run &lt;1&gt;"));
        assert!(html.contains("<img src=\"latency.svg\""));
        assert!(html.contains("href=\"failure-1.json\""));
        assert!(html.contains("href=\"report.json\""));
        // Charts take the content width.
        assert!(html.contains("figure img{display:block;width:100%"));
        assert!(!html.contains("id=\"failure\""), "no failure section for a run without one");
    }

    #[test]
    fn a_failure_is_shown_in_full_before_the_summary() {
        let index = Index {
            title: "run".into(),
            summary: vec![("seed".into(), "7".into())],
            failure: Some(FailureDetail {
                class: "wrong-data".into(),
                message: "sector 42 holds <garbage>".into(),
                context: "found at request 10 after 2 crashes".into(),
                sectors: vec![SectorRow {
                    sector: 42,
                    allowed: vec!["write #3".into(), "zeros".into()],
                    actual: "garbage".into(),
                }],
                repro_command: "fvdsim repro /tmp/r/failure-main-7.json".into(),
                file: "failure-main-7.json".into(),
            }),
            ..Index::default()
        };
        let html = render_index(&index);
        let failure = html.find("id=\"failure\"").unwrap();
        assert!(failure < html.find("<h2>Summary").unwrap());
        for text in [
            "Failure: wrong-data",
            "sector 42 holds &lt;garbage&gt;",
            "found at request 10 after 2 crashes",
            "<tr><th>sector</th><th>allowed values</th><th>actual</th></tr>",
            "<tr><td>42</td><td>write #3<br>zeros</td><td>garbage</td></tr>",
            "<code>fvdsim repro /tmp/r/failure-main-7.json</code>",
            "href=\"failure-main-7.json\"",
        ] {
            assert!(html.contains(text), "missing {text:?}");
        }
    }
}
