//! Block traces: parsing the CloudPhysics vscsi CSV, the MSR Cambridge CSV and a plain text
//! format into [`TraceRequest`]s. A bad line is reported with file, line number and why.
//!
//! Formats:
//! - **CloudPhysics** (`../shared/data/README.md`): header `version,time,op,size,lbn`; `time` in
//!   whole seconds, `op` `28` (READ(10)) or `2a` (WRITE(10)), `size` bytes (a multiple of 512),
//!   `lbn` in 512-byte sectors. Requests sharing a second are spread evenly across it, in order.
//! - **MSR Cambridge**: `Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime`; timestamp
//!   in Windows filetime (100 ns units), `Type` `Read` or `Write`, offset and size in bytes.
//! - **Plain**: `time_ms offset_sectors len_sectors r|w` per line; `#` starts a comment.

use std::path::Path;

/// Request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOp {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// One request of a trace, times relative to the first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRequest {
    /// Issue time, nanoseconds after the first request.
    pub time_ns: u64,
    /// First sector.
    pub offset_sectors: u64,
    /// Length in sectors (at least 1).
    pub len_sectors: u64,
    /// Read or write.
    pub op: TraceOp,
}

/// Trace file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// CloudPhysics vscsi CSV.
    Cloudphysics,
    /// MSR Cambridge CSV.
    Msr,
    /// `time_ms offset_sectors len_sectors r|w`.
    Plain,
}

/// A trace that cannot be read: names the file, the line (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {why}")]
pub struct TraceError {
    /// The file.
    pub file: String,
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

fn field<'a>(fields: &[&'a str], index: usize, name: &str) -> Result<&'a str, String> {
    fields.get(index).map(|f| f.trim()).ok_or_else(|| format!("missing field {name} (column {})", index + 1))
}

fn number(text: &str, name: &str, radix: u32) -> Result<u64, String> {
    u64::from_str_radix(text, radix)
        .map_err(|_| format!("{name} {text:?} is not a {} number", if radix == 16 { "hex" } else { "decimal" }))
}

/// Parses trace text. `file` names the source in errors.
pub fn parse(text: &str, format: TraceFormat, file: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let error = |line: usize, why: String| TraceError { file: file.to_string(), line, why };
    let mut raw: Vec<(u64, u64, u64, TraceOp)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number_1 = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let parsed = match format {
            TraceFormat::Cloudphysics => {
                if index == 0 && trimmed.starts_with("version") {
                    continue;
                }
                parse_cloudphysics(trimmed)
            }
            TraceFormat::Msr => {
                if index == 0 && trimmed.starts_with("Timestamp") {
                    continue;
                }
                parse_msr(trimmed)
            }
            TraceFormat::Plain => parse_plain(trimmed),
        };
        raw.push(parsed.map_err(|why| error(number_1, why))?);
    }
    if raw.is_empty() {
        return Err(error(0, "the trace holds no requests".into()));
    }
    Ok(match format {
        TraceFormat::Cloudphysics => spread_seconds(&raw),
        _ => {
            let start = raw.iter().map(|r| r.0).min().unwrap_or(0);
            raw.into_iter()
                .map(|(t, offset_sectors, len_sectors, op)| TraceRequest {
                    time_ns: t - start,
                    offset_sectors,
                    len_sectors,
                    op,
                })
                .collect()
        }
    })
}

/// Reads and parses a trace file.
pub fn load(path: &Path, format: TraceFormat) -> Result<Vec<TraceRequest>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|e| TraceError {
        file: path.display().to_string(),
        line: 0,
        why: e.to_string(),
    })?;
    parse(&text, format, &path.display().to_string())
}

fn parse_cloudphysics(line: &str) -> Result<(u64, u64, u64, TraceOp), String> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 comma-separated fields (version,time,op,size,lbn), found {}", fields.len()));
    }
    let seconds = number(field(&fields, 1, "time")?, "time", 10)?;
    let op = match field(&fields, 2, "op")?.to_ascii_lowercase().as_str() {
        "28" => TraceOp::Read,
        "2a" => TraceOp::Write,
        other => return Err(format!("op {other:?} is neither 28 (READ(10)) nor 2a (WRITE(10))")),
    };
    let size = number(field(&fields, 3, "size")?, "size", 10)?;
    if size == 0 || !size.is_multiple_of(512) {
        return Err(format!("size {size} is not a positive multiple of 512"));
    }
    let lbn = number(field(&fields, 4, "lbn")?, "lbn", 10)?;
    Ok((seconds, lbn, size / 512, op))
}

fn parse_msr(line: &str) -> Result<(u64, u64, u64, TraceOp), String> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() < 6 {
        return Err(format!(
            "expected 7 comma-separated fields (Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime), found {}",
            fields.len()
        ));
    }
    let filetime = number(field(&fields, 0, "Timestamp")?, "Timestamp", 10)?;
    let op = match field(&fields, 3, "Type")?.to_ascii_lowercase().as_str() {
        "read" => TraceOp::Read,
        "write" => TraceOp::Write,
        other => return Err(format!("Type {other:?} is neither Read nor Write")),
    };
    let offset = number(field(&fields, 4, "Offset")?, "Offset", 10)?;
    let size = number(field(&fields, 5, "Size")?, "Size", 10)?;
    if size == 0 {
        return Err("Size is 0".into());
    }
    // Byte requests are widened to whole sectors.
    let first = offset / 512;
    let end = (offset + size).div_ceil(512);
    Ok((filetime * 100, first, end - first, op))
}

fn parse_plain(line: &str) -> Result<(u64, u64, u64, TraceOp), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() != 4 {
        return Err(format!("expected 4 fields (time_ms offset_sectors len_sectors r|w), found {}", fields.len()));
    }
    let time_ms: f64 = fields[0].parse().map_err(|_| format!("time_ms {:?} is not a number", fields[0]))?;
    if !(time_ms.is_finite() && time_ms >= 0.0) {
        return Err(format!("time_ms {time_ms} is negative or not finite"));
    }
    let offset = number(fields[1], "offset_sectors", 10)?;
    let len = number(fields[2], "len_sectors", 10)?;
    if len == 0 {
        return Err("len_sectors is 0".into());
    }
    let op = match fields[3] {
        "r" | "R" => TraceOp::Read,
        "w" | "W" => TraceOp::Write,
        other => return Err(format!("kind {other:?} is neither r nor w")),
    };
    Ok(((time_ms * 1e6).round() as u64, offset, len, op))
}

/// CloudPhysics times are whole seconds: spread the requests of each second evenly across it.
fn spread_seconds(raw: &[(u64, u64, u64, TraceOp)]) -> Vec<TraceRequest> {
    let start = raw.iter().map(|r| r.0).min().unwrap_or(0);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let second = raw[i].0;
        let j = raw[i..].iter().position(|r| r.0 != second).map_or(raw.len(), |n| i + n);
        let count = (j - i) as u64;
        for (k, r) in raw[i..j].iter().enumerate() {
            let time_ns = (second - start) * 1_000_000_000 + k as u64 * 1_000_000_000 / count;
            out.push(TraceRequest { time_ns, offset_sectors: r.1, len_sectors: r.2, op: r.3 });
        }
        i = j;
    }
    out
}

/// Writes requests in the plain format (for shrunk traces and tests).
pub fn to_plain(requests: &[TraceRequest]) -> String {
    let mut out = String::from("# time_ms offset_sectors len_sectors r|w\n");
    for r in requests {
        out.push_str(&format!(
            "{} {} {} {}\n",
            r.time_ns as f64 / 1e6,
            r.offset_sectors,
            r.len_sectors,
            if r.op == TraceOp::Read { 'r' } else { 'w' }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cloudphysics_lines_parse_and_seconds_are_spread() {
        let text = "version,time,op,size,lbn\n1,100,2a,512,42\n1,100,28,4096,7\n1,101,2A,1024,9\n";
        let trace = parse(text, TraceFormat::Cloudphysics, "t.csv").unwrap();
        assert_eq!(trace.len(), 3);
        assert_eq!(trace[0], TraceRequest { time_ns: 0, offset_sectors: 42, len_sectors: 1, op: TraceOp::Write });
        assert_eq!(trace[1].time_ns, 500_000_000);
        assert_eq!(trace[1].op, TraceOp::Read);
        assert_eq!(trace[2].time_ns, 1_000_000_000);
    }

    #[test]
    fn bad_lines_name_file_line_and_reason() {
        let error =
            parse("version,time,op,size,lbn\n1,100,2a,512,42\n1,100,2b,512,42\n", TraceFormat::Cloudphysics, "t.csv")
                .unwrap_err();
        assert_eq!(error.to_string(), "t.csv:3: op \"2b\" is neither 28 (READ(10)) nor 2a (WRITE(10))");
        let error = parse("1,100,2a,500,42\n", TraceFormat::Cloudphysics, "t.csv").unwrap_err();
        assert!(error.to_string().contains("t.csv:1: size 500"));
        let error = parse("1,100,2a\n", TraceFormat::Cloudphysics, "t.csv").unwrap_err();
        assert!(error.to_string().contains("expected 5"));
        let error = parse("0 10 8 x\n", TraceFormat::Plain, "p.txt").unwrap_err();
        assert!(error.to_string().starts_with("p.txt:1: kind"));
        assert!(parse("", TraceFormat::Plain, "empty.txt").unwrap_err().to_string().contains("no requests"));
        let error = parse("128166372003061629,hm,0,Read,abc,4096,100\n", TraceFormat::Msr, "m.csv").unwrap_err();
        assert!(error.to_string().contains("Offset \"abc\""));
    }

    #[test]
    fn msr_lines_parse_into_whole_sectors() {
        let text = "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n128166372003061629,hm,1,Read,3584,1000,1331\n128166372013061629,hm,1,Write,0,512,10\n";
        let trace = parse(text, TraceFormat::Msr, "m.csv").unwrap();
        assert_eq!(trace[0], TraceRequest { time_ns: 0, offset_sectors: 7, len_sectors: 2, op: TraceOp::Read });
        assert_eq!(trace[1].time_ns, 1_000_000_000);
    }

    #[test]
    fn the_shipped_cloudphysics_trace_parses_whole() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cloudphysics-vscsi.csv");
        assert!(path.exists(), "the reference data must sit beside the repository: {}", path.display());
        let trace = load(&path, TraceFormat::Cloudphysics).unwrap();
        assert_eq!(trace.len(), 113_872);
        assert_eq!(trace.iter().filter(|r| r.op == TraceOp::Write).count(), 66_898);
        assert!(trace.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    }

    proptest! {
        #[test]
        fn plain_traces_round_trip(requests in proptest::collection::vec((0u64..1_000_000, 0u64..1 << 30, 1u64..4096, any::<bool>()), 1..50)) {
            let mut time_ns = 0;
            let trace: Vec<TraceRequest> = requests.iter().map(|&(dt_us, offset_sectors, len_sectors, write)| {
                time_ns += dt_us * 1000;
                TraceRequest { time_ns, offset_sectors, len_sectors, op: if write { TraceOp::Write } else { TraceOp::Read } }
            }).collect();
            let text = to_plain(&trace);
            let back = parse(&text, TraceFormat::Plain, "rt.txt").unwrap();
            let shifted: Vec<TraceRequest> = trace.iter().map(|r| TraceRequest { time_ns: r.time_ns - trace[0].time_ns, ..*r }).collect();
            prop_assert_eq!(back, shifted);
        }
    }
}
