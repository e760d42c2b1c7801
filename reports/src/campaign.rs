//! The HTML page of a campaign directory (`fvdsim swarm`, `cargo xtask nightly`): its figures,
//! coverage drawn as bars (paths never reached in red, so a campaign that misses something shows
//! it), and the distinct failures with their repro commands.

use std::fmt::Write as _;

use crate::html::{escape, push_files};

/// One coverage path and how often the campaign reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageRow {
    /// Path name, `group: what` (for example `engine: journal recycle`).
    pub path: String,
    /// Times reached (0: never).
    pub count: u64,
}

/// One distinct failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    /// What identifies it across seeds.
    pub signature: String,
    /// Runs that showed it.
    pub count: u64,
    /// First seed that showed it.
    pub first_seed: String,
    /// When it was first and last seen (campaign labels, UTC).
    pub seen: String,
    /// The failure message of the smallest failing run.
    pub message: String,
    /// The command that replays the smallest failing run.
    pub repro_command: String,
}

/// A table of figures under its own heading (one row per run of a `fvdsim qemu` campaign, say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Heading above the table.
    pub heading: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of cells, as many as `columns`; a cell naming a file (`*.json`, `*.html`) is linked.
    pub rows: Vec<Vec<String>>,
}

/// What the page shows.
#[derive(Debug, Clone, Default)]
pub struct CampaignPage {
    /// Page title.
    pub title: String,
    /// `(name, value)` rows of the summary table.
    pub summary: Vec<(String, String)>,
    /// Tables after the summary (none for a swarm).
    pub tables: Vec<Table>,
    /// Every coverage path, in report order (the section is left out when there are none).
    pub coverage: Vec<CoverageRow>,
    /// Distinct failures.
    pub failures: Vec<FailureRow>,
    /// Other files to link: `(description, file)`.
    pub files: Vec<(String, String)>,
}

/// Bar length in per cent of the widest: logarithmic, so a path reached 3 times is visible
/// beside one reached 3 million times; 0 for never.
fn bar_percent(count: u64, max: u64) -> f64 {
    if count == 0 || max == 0 {
        return 0.0;
    }
    let span = ((max as f64) + 1.0).log10().max(1e-9);
    (((count as f64) + 1.0).log10() / span * 100.0).clamp(2.0, 100.0)
}

/// Renders the page.
pub fn render_campaign_page(page: &CampaignPage) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title>\n<style>\
body{{font-family:sans-serif;font-size:16px;max-width:1100px;margin:2em auto;color:#222}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}}\
.cov td{{border:none;padding:2px 8px}}.cov .name{{white-space:nowrap}}.cov .barcell{{width:55%}}\
.bar{{background:#3a78c2;height:14px}}.never{{color:#b00;font-weight:bold}}.count{{text-align:right;font-variant-numeric:tabular-nums}}\
.group td{{padding-top:10px;font-weight:bold;color:#555}}code{{font-size:14px}}.fail{{color:#b00}}\
</style></head><body>\n<h1>{0}</h1>\n",
        escape(&page.title)
    );
    html.push_str("<h2>Summary</h2>\n<table>\n");
    for (name, value) in &page.summary {
        let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
    }
    html.push_str("</table>\n");
    for table in &page.tables {
        push_table(&mut html, table);
    }
    html.push_str("<h2>Failures</h2>\n");
    if page.failures.is_empty() {
        html.push_str("<p>None: every run passed.</p>\n");
    } else {
        html.push_str(
            "<table>\n<tr><th>failure</th><th>runs</th><th>first seed</th><th>seen</th><th>replay</th></tr>\n",
        );
        for failure in &page.failures {
            let _ = writeln!(
                html,
                "<tr><td class=\"fail\"><b>{}</b><br>{}</td><td class=\"count\">{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
                escape(&failure.signature),
                escape(&failure.message),
                failure.count,
                escape(&failure.first_seed),
                escape(&failure.seen),
                escape(&failure.repro_command)
            );
        }
        html.push_str("</table>\n");
    }
    if !page.coverage.is_empty() {
        push_coverage(&mut html, &page.coverage);
    }
    push_files(&mut html, &page.files);
    html.push_str("</body></html>\n");
    html
}

/// Sorts a table by the clicked column (numbers as numbers), ascending then descending.
const SORT_SCRIPT: &str = "<script>function fvdsimSort(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),\
d=th.dataset.d=th.dataset.d==='a'?'d':'a',rows=[...t.querySelectorAll('tr')].slice(1),\
v=r=>{const c=r.children[i].innerText,n=parseFloat(c.replace(/[^0-9.+-]/g,''));return isNaN(n)?c:n};\
rows.sort((a,b)=>{const x=v(a),y=v(b);const o=typeof x==='number'&&typeof y==='number'?x-y:String(x).localeCompare(String(y));return d==='a'?o:-o});\
rows.forEach(r=>t.appendChild(r))}</script>";

/// A table under its heading; cells naming a `.json`, `.html` or `.svg` file are links, numbers
/// align right, and a click on a column's name sorts by it.
pub(crate) fn push_table(html: &mut String, table: &Table) {
    if !html.contains("function fvdsimSort") {
        html.push_str(SORT_SCRIPT);
    }
    let _ = writeln!(html, "<h2>{}</h2>\n<table class=\"sortable\">", escape(&table.heading));
    html.push_str("<tr>");
    for column in &table.columns {
        let _ = write!(
            html,
            "<th onclick=\"fvdsimSort(this)\" style=\"cursor:pointer\" title=\"sort\">{}</th>",
            escape(column)
        );
    }
    html.push_str("</tr>\n");
    for row in &table.rows {
        html.push_str("<tr>");
        for cell in row {
            let linked = !cell.contains(' ') && [".json", ".html", ".svg"].iter().any(|e| cell.ends_with(e));
            if cell.starts_with('[') && cell.ends_with(')') && cell.contains("](") {
                // `[text](file) [text](file)`: links under short names.
                html.push_str("<td>");
                for link in cell.split(") ") {
                    let (text, file) = link.trim_start_matches('[').split_once("](").unwrap_or((link, ""));
                    let _ = write!(html, "<a href=\"{}\">{}</a> ", escape(file.trim_end_matches(')')), escape(text));
                }
                html.push_str("</td>");
            } else if cell.contains('\n') {
                // Lines that must not wrap (command-line flags).
                let lines: Vec<String> = cell.lines().map(escape).collect();
                let _ = write!(html, "<td style=\"white-space:nowrap\">{}</td>", lines.join("<br>"));
            } else if linked {
                let _ = write!(html, "<td><a href=\"{0}\">{0}</a></td>", escape(cell));
            } else if cell
                .trim_start_matches(['+', '-'])
                .split([' ', '%', '×'])
                .next()
                .is_some_and(|n| n.parse::<f64>().is_ok())
            {
                let _ = write!(html, "<td class=\"count\">{}</td>", escape(cell));
            } else {
                let _ = write!(html, "<td>{}</td>", escape(cell));
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

fn push_coverage(html: &mut String, coverage: &[CoverageRow]) {
    let reached = coverage.iter().filter(|r| r.count > 0).count();
    let _ = writeln!(
        html,
        "<h2>Coverage: {reached} of {} paths reached</h2>\n<p>Bars are logarithmic in the times each path was reached over the campaign; a path never reached is named in red.</p>\n<table class=\"cov\">",
        coverage.len()
    );
    let max = coverage.iter().map(|r| r.count).max().unwrap_or(0);
    let mut group = "";
    for row in coverage {
        let this_group = row.path.split(':').next().unwrap_or("");
        if this_group != group {
            group = this_group;
            let _ = writeln!(html, "<tr class=\"group\"><td colspan=\"3\">{}</td></tr>", escape(group));
        }
        let name = row.path.split_once(": ").map_or(row.path.as_str(), |(_, name)| name);
        if row.count == 0 {
            let _ = writeln!(
                html,
                "<tr><td class=\"name never\">{}</td><td class=\"barcell never\">never reached</td><td class=\"count never\">0</td></tr>",
                escape(name)
            );
        } else {
            let _ = writeln!(
                html,
                "<tr><td class=\"name\">{}</td><td class=\"barcell\"><div class=\"bar\" style=\"width:{:.1}%\"></div></td><td class=\"count\">{}</td></tr>",
                escape(name),
                bar_percent(row.count, max),
                row.count
            );
        }
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reached_paths_are_named_and_failures_listed() {
        let page = CampaignPage {
            title: "swarm <1>".into(),
            summary: vec![("seeds".into(), "300".into())],
            coverage: vec![
                CoverageRow { path: "engine: journal recycle".into(), count: 1_000_000 },
                CoverageRow { path: "engine: storage growth".into(), count: 3 },
                CoverageRow { path: "config: profile v1".into(), count: 0 },
            ],
            failures: vec![FailureRow {
                signature: "check after mid-recycle".into(),
                count: 2,
                first_seed: "0x1".into(),
                seen: "2026-12-03".into(),
                message: "corrupt".into(),
                repro_command: "fvdsim repro a.json".into(),
            }],
            files: Vec::new(),
            ..CampaignPage::default()
        };
        let html = render_campaign_page(&page);
        assert!(html.contains("swarm &lt;1&gt;"));
        assert!(html.contains("2 of 3 paths reached"));
        assert!(html.contains("<td class=\"name never\">profile v1</td>"));
        assert!(html.contains("fvdsim repro a.json"));
        // A path reached 3 times still gets a visible bar beside one reached a million times.
        assert!(bar_percent(3, 1_000_000) > 5.0 && bar_percent(3, 1_000_000) < 20.0);
        assert_eq!(bar_percent(0, 10), 0.0);
        assert_eq!(bar_percent(10, 10), 100.0);
    }

    #[test]
    fn tables_link_files_and_a_page_without_coverage_has_no_coverage_section() {
        let page = CampaignPage {
            title: "qemu".into(),
            tables: vec![Table {
                heading: "Runs".into(),
                columns: vec!["format".into(), "states".into(), "report".into()],
                rows: vec![vec!["qcow2".into(), "319".into(), "qcow2-1/report.json".into()]],
            }],
            ..CampaignPage::default()
        };
        let html = render_campaign_page(&page);
        assert!(html.contains("<h2>Runs</h2>"));
        assert!(html.contains("<td class=\"count\">319</td>"));
        assert!(html.contains("fvdsimSort(this)"), "columns sort");
        assert!(html.contains("<a href=\"qcow2-1/report.json\">qcow2-1/report.json</a>"));
        assert!(!html.contains("Coverage"));
        assert!(html.contains("None: every run passed."));
        let links = Table { rows: vec![vec!["[prefetch](a.svg) [latency](b.svg)".into()]], ..Table::default() };
        let mut html = String::new();
        push_table(&mut html, &links);
        assert!(html.contains("<a href=\"a.svg\">prefetch</a> <a href=\"b.svg\">latency</a>"), "{html}");
    }
}
