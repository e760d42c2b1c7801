//! The HTML index of a run directory: summary, charts and failure files, linked.

use std::fmt::Write as _;

/// What the index shows.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Page title.
    pub title: String,
    /// `(name, value)` rows of the summary table.
    pub summary: Vec<(String, String)>,
    /// `(caption, file)` of each chart (relative paths).
    pub charts: Vec<(String, String)>,
    /// `(description, file)` of each failure file.
    pub failures: Vec<(String, String)>,
    /// Other files to link: `(description, file)`.
    pub files: Vec<(String, String)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Renders the index page.
pub fn render_index(index: &Index) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%;border:1px solid #eee}}.fail{{color:#b00}}</style></head><body>\n<h1>{0}</h1>\n",
        escape(&index.title)
    );
    html.push_str("<h2>Summary</h2>\n<table>\n");
    for (name, value) in &index.summary {
        let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
    }
    html.push_str("</table>\n");
    html.push_str("<h2>Failures</h2>\n");
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
    if !index.files.is_empty() {
        html.push_str("<h2>Files</h2>\n<ul>\n");
        for (description, file) in &index.files {
            let _ = writeln!(html, "<li><a href=\"{0}\">{0}</a>: {1}</li>", escape(file), escape(description));
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body></html>\n");
    html
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
        };
        let html = render_index(&index);
        assert!(html.contains("run &lt;1&gt;"));
        assert!(html.contains("<img src=\"latency.svg\""));
        assert!(html.contains("href=\"failure-1.json\""));
        assert!(html.contains("href=\"report.json\""));
    }
}
