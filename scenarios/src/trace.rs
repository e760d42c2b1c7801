//! Block traces: parsing the CloudPhysics vscsi CSV, the MSR Cambridge CSV and a plain text
//! format into a [`Trace`]. A bad line is reported with file, line number and why; no number in
//! a trace sizes an allocation or overflows arithmetic.
//!
//! Formats:
//! - **CloudPhysics** (`data/README.md`): header `version,time,op,size,lbn`; `time` in whole
//!   seconds, `op` `28` (READ(10)) or `2a` (WRITE(10)), `size` bytes (a multiple of 512), `lbn`
//!   in 512-byte sectors. Requests sharing a second are spread evenly across it, in order.
//! - **MSR Cambridge**: `Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime` (exactly
//!   7 fields); timestamp in Windows filetime (100 ns units), `Type` `Read` or `Write`, offset and
//!   size in bytes (widened to whole sectors).
//! - **Plain**: `time_ms offset_sectors len_sectors r|w` per line; `#` starts a comment.
//!
//! Any of them may be gzip-compressed (recognised by its magic bytes), start with a UTF-8 byte
//! order mark, and end lines with LF, CRLF or CR. Requests are replayed in file order; a request
//! stamped earlier than one before it is counted in [`Trace::out_of_order`] and issued at once.
//!
//! Limits: a request longer than [`MAX_REQUEST_BYTES`] is split into pieces of that size issued
//! together (as a guest block layer splits at its `max_sectors`), one longer than
//! [`MAX_TRACE_REQUEST_BYTES`] is refused, and no request may end beyond [`MAX_DISK_BYTES`].

use std::io::Read as _;
use std::path::Path;

use crate::stamp::SECTOR_BYTES;

/// Longest request issued as one: longer trace requests are split into pieces of this size
/// (4 MiB, a common `max_sectors_kb` of guest block layers).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Longest request a trace may hold (1 GiB); a longer one is refused with its line.
pub const MAX_TRACE_REQUEST_BYTES: u64 = 1 << 30;

/// Largest disk a trace may address (1 PiB): a request ending beyond it is refused.
pub const MAX_DISK_BYTES: u64 = 1 << 50;

/// Largest trace time accepted (about 31.7 years, in ns): later times are refused, not capped.
pub const MAX_TIME_NS: u64 = 1_000_000_000 * 1_000_000_000;

/// Name under which the built-in CloudPhysics trace is recorded in configurations.
pub const BUILTIN_CLOUDPHYSICS: &str = "builtin:cloudphysics-vscsi";

/// The CloudPhysics trace shipped in the repository (`data/cloudphysics-vscsi.csv.gz`).
static CLOUDPHYSICS_GZ: &[u8] = include_bytes!("../../data/cloudphysics-vscsi.csv.gz");

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
    /// Issue time, nanoseconds after the earliest request.
    pub time_ns: u64,
    /// First sector.
    pub offset_sectors: u64,
    /// Length in sectors (1 ..= `MAX_REQUEST_BYTES / 512`).
    pub len_sectors: u64,
    /// Read or write.
    pub op: TraceOp,
}

/// A parsed trace and what parsing noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The requests, in file order (split requests as consecutive pieces).
    pub requests: Vec<TraceRequest>,
    /// Requests stamped earlier than a request before them in the file.
    pub out_of_order: u64,
    /// Trace requests longer than [`MAX_REQUEST_BYTES`] that were split.
    pub split: u64,
    /// One past the last sector any request touches.
    pub extent_sectors: u64,
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

impl TraceFormat {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::Cloudphysics => "cloudphysics",
            TraceFormat::Msr => "msr",
            TraceFormat::Plain => "plain",
        }
    }
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
    u64::from_str_radix(text, radix).map_err(|_| {
        format!("{name} {text:?} is not a {} number below 2^64", if radix == 16 { "hex" } else { "decimal" })
    })
}

/// Lines of `text` split at LF, CRLF or CR, numbered from 1, after any byte order mark.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rest = text;
    let mut number = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        number += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let after = &rest[end..];
        rest = after
            .strip_prefix("\r\n")
            .or_else(|| after.strip_prefix('\n'))
            .or_else(|| after.strip_prefix('\r'))
            .unwrap_or(after);
        Some((number, line))
    })
}

/// One parsed line: time (ns, or whole seconds for CloudPhysics), first sector, sectors, kind.
type RawRequest = (u64, u64, u64, TraceOp);

/// Parses trace text. `file` names the source in errors.
pub fn parse(text: &str, format: TraceFormat, file: &str) -> Result<Trace, TraceError> {
    let error = |line: usize, why: String| TraceError { file: file.to_string(), line, why };
    let mut raw: Vec<(usize, RawRequest)> = Vec::new();
    let mut first_content_line = true;
    for (number, line) in lines(text) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let header = std::mem::replace(&mut first_content_line, false);
        let parsed = match format {
            TraceFormat::Cloudphysics => {
                if header && trimmed.starts_with("version") {
                    continue;
                }
                parse_cloudphysics(trimmed)
            }
            TraceFormat::Msr => {
                if header && trimmed.starts_with("Timestamp") {
                    continue;
                }
                parse_msr(trimmed)
            }
            TraceFormat::Plain => parse_plain(trimmed),
        };
        let request = parsed.and_then(check_extent).map_err(|why| error(number, why))?;
        raw.push((number, request));
    }
    if raw.is_empty() {
        return Err(error(0, "the trace holds no requests".into()));
    }
    // Times become relative to the earliest request. CloudPhysics and plain times are checked
    // per line; MSR timestamps are absolute filetimes, so only their span can be.
    if format == TraceFormat::Msr {
        let start = raw.iter().map(|(_, r)| r.0).min().unwrap_or(0);
        if let Some((line, request)) = raw.iter().find(|(_, r)| r.0 - start > MAX_TIME_NS) {
            return Err(error(
                *line,
                format!(
                    "Timestamp {} ns after the earliest request is beyond the latest time fvdsim replays ({MAX_TIME_NS} ns)",
                    request.0 - start
                ),
            ));
        }
    }
    let timed: Vec<RawRequest> = match format {
        TraceFormat::Cloudphysics => spread_seconds(&raw),
        _ => raw.into_iter().map(|(_, r)| r).collect(),
    };
    Ok(assemble(timed))
}

/// Refuses a request longer than the trace limit or ending beyond the largest disk.
fn check_extent(request: RawRequest) -> Result<RawRequest, String> {
    let (_, first, sectors, _) = request;
    if sectors > MAX_TRACE_REQUEST_BYTES / SECTOR_BYTES {
        return Err(format!(
            "a request of {} bytes is longer than the {} bytes fvdsim replays",
            u128::from(sectors) * 512,
            MAX_TRACE_REQUEST_BYTES
        ));
    }
    match first.checked_add(sectors) {
        Some(end) if end <= MAX_DISK_BYTES / SECTOR_BYTES => Ok(request),
        _ => Err(format!(
            "the request at sector {first} ({sectors} sectors) ends beyond the largest disk fvdsim simulates ({} bytes)",
            MAX_DISK_BYTES
        )),
    }
}

/// Times relative to the earliest, out-of-order count, long requests split, extent.
fn assemble(raw: Vec<RawRequest>) -> Trace {
    let start = raw.iter().map(|r| r.0).min().unwrap_or(0);
    let max_piece = MAX_REQUEST_BYTES / SECTOR_BYTES;
    let mut trace = Trace { requests: Vec::with_capacity(raw.len()), out_of_order: 0, split: 0, extent_sectors: 0 };
    let mut latest = 0u64;
    for (time, first, sectors, op) in raw {
        let time_ns = time - start;
        if time_ns < latest {
            trace.out_of_order += 1;
        }
        latest = latest.max(time_ns);
        trace.extent_sectors = trace.extent_sectors.max(first + sectors);
        if sectors > max_piece {
            trace.split += 1;
        }
        let mut at = first;
        while at < first + sectors {
            let len_sectors = max_piece.min(first + sectors - at);
            trace.requests.push(TraceRequest { time_ns, offset_sectors: at, len_sectors, op });
            at += len_sectors;
        }
    }
    trace
}

/// Reads and parses a trace file (gzip or plain text), or the built-in trace
/// ([`BUILTIN_CLOUDPHYSICS`]).
pub fn load(path: &Path, format: TraceFormat) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let whole = |why: String| TraceError { file: name.clone(), line: 0, why };
    let bytes = if name == BUILTIN_CLOUDPHYSICS {
        CLOUDPHYSICS_GZ.to_vec()
    } else {
        std::fs::read(path).map_err(|e| whole(e.to_string()))?
    };
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut text)
            .map_err(|e| whole(format!("not a readable gzip file: {e}")))?;
        text
    } else {
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!("not UTF-8 text (invalid byte at offset {}): is the format right?", e.utf8_error().valid_up_to()))
    })?;
    parse(&text, format, &name)
}

fn parse_cloudphysics(line: &str) -> Result<RawRequest, String> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 comma-separated fields (version,time,op,size,lbn), found {}", fields.len()));
    }
    let seconds = number(field(&fields, 1, "time")?, "time", 10)?;
    if seconds > MAX_TIME_NS / 1_000_000_000 {
        return Err(format!(
            "time {seconds} s is beyond the latest time fvdsim replays ({} s)",
            MAX_TIME_NS / 1_000_000_000
        ));
    }
    let op = match field(&fields, 2, "op")?.to_ascii_lowercase().as_str() {
        "28" => TraceOp::Read,
        "2a" => TraceOp::Write,
        other => return Err(format!("op {other:?} is neither 28 (READ(10)) nor 2a (WRITE(10))")),
    };
    let size = number(field(&fields, 3, "size")?, "size", 10)?;
    if size == 0 || !size.is_multiple_of(SECTOR_BYTES) {
        return Err(format!("size {size} is not a positive multiple of 512"));
    }
    let lbn = number(field(&fields, 4, "lbn")?, "lbn", 10)?;
    Ok((seconds, lbn, size / SECTOR_BYTES, op))
}

fn parse_msr(line: &str) -> Result<RawRequest, String> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != 7 {
        return Err(format!(
            "expected 7 comma-separated fields (Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime), found {}",
            fields.len()
        ));
    }
    let filetime = number(field(&fields, 0, "Timestamp")?, "Timestamp", 10)?;
    let time_ns = filetime
        .checked_mul(100)
        .ok_or_else(|| format!("Timestamp {filetime} is beyond the latest filetime fvdsim replays"))?;
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
    let end = offset
        .checked_add(size)
        .ok_or_else(|| format!("Offset {offset} + Size {size} is beyond the largest disk fvdsim simulates"))?;
    // Byte requests are widened to whole sectors.
    let first = offset / SECTOR_BYTES;
    Ok((time_ns, first, end.div_ceil(SECTOR_BYTES) - first, op))
}

fn parse_plain(line: &str) -> Result<RawRequest, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() != 4 {
        return Err(format!("expected 4 fields (time_ms offset_sectors len_sectors r|w), found {}", fields.len()));
    }
    let time_ms: f64 = fields[0].parse().map_err(|_| format!("time_ms {:?} is not a number", fields[0]))?;
    if !(time_ms.is_finite() && time_ms >= 0.0) {
        return Err(format!("time_ms {time_ms} is negative or not finite"));
    }
    if time_ms * 1e6 > MAX_TIME_NS as f64 {
        return Err(format!(
            "time_ms {time_ms} is beyond the latest time fvdsim replays ({} ms)",
            MAX_TIME_NS / 1_000_000
        ));
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

/// CloudPhysics times are whole seconds: spread the requests of each run of equal seconds evenly
/// across it; times become nanoseconds.
fn spread_seconds(raw: &[(usize, RawRequest)]) -> Vec<RawRequest> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let second = raw[i].1.0;
        let j = raw[i..].iter().position(|r| r.1.0 != second).map_or(raw.len(), |n| i + n);
        let count = (j - i) as u64;
        for (k, (_, r)) in raw[i..j].iter().enumerate() {
            // `second` is at most MAX_TIME_NS / 1e9 (checked per line), so this cannot overflow.
            let time_ns = second * 1_000_000_000 + k as u64 * 1_000_000_000 / count;
            out.push((time_ns, r.1, r.2, r.3));
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

    fn requests(text: &str, format: TraceFormat) -> Vec<TraceRequest> {
        parse(text, format, "t").unwrap().requests
    }

    #[test]
    fn cloudphysics_lines_parse_and_seconds_are_spread() {
        let text = "version,time,op,size,lbn\n1,100,2a,512,42\n1,100,28,4096,7\n1,101,2A,1024,9\n";
        let trace = requests(text, TraceFormat::Cloudphysics);
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
    fn msr_lines_parse_into_whole_sectors_and_need_exactly_seven_fields() {
        let text = "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n128166372003061629,hm,1,Read,3584,1000,1331\n128166372013061629,hm,1,Write,0,512,10\n";
        let trace = requests(text, TraceFormat::Msr);
        assert_eq!(trace[0], TraceRequest { time_ns: 0, offset_sectors: 7, len_sectors: 2, op: TraceOp::Read });
        assert_eq!(trace[1].time_ns, 1_000_000_000);
        for line in ["128166372003061629,hm,1,Read,3584,1000", "128166372003061629,hm,1,Read,3584,1000,1,extra"] {
            let error = parse(line, TraceFormat::Msr, "m.csv").unwrap_err().to_string();
            assert!(error.starts_with("m.csv:1: expected 7 comma-separated fields"), "{error}");
        }
    }

    #[test]
    fn line_ends_crlf_cr_and_a_byte_order_mark_are_read() {
        let lf = "version,time,op,size,lbn\n1,100,2a,512,42\n1,101,28,512,7\n";
        let expected = requests(lf, TraceFormat::Cloudphysics);
        for text in [lf.replace('\n', "\r\n"), lf.replace('\n', "\r"), format!("\u{feff}{}", lf.replace('\n', "\r\n"))]
        {
            assert_eq!(requests(&text, TraceFormat::Cloudphysics), expected, "{text:?}");
        }
        // Line numbers count CRLF as one line end.
        let error = parse("0 1 1 w\r\n0 1 1 x\r\n", TraceFormat::Plain, "p").unwrap_err();
        assert_eq!(error.line, 2);
    }

    #[test]
    fn out_of_order_timestamps_are_counted_and_replayed_in_file_order() {
        let trace = parse("5 0 1 w\n3 8 1 w\n9 16 1 r\n4 24 1 r\n", TraceFormat::Plain, "p").unwrap();
        assert_eq!(trace.out_of_order, 2);
        assert_eq!(trace.requests.iter().map(|r| r.offset_sectors).collect::<Vec<_>>(), vec![0, 8, 16, 24]);
        assert_eq!(trace.requests[1].time_ns, 0, "times are relative to the earliest");
        assert_eq!(trace.extent_sectors, 25);
    }

    #[test]
    fn absurd_numbers_are_refused_with_their_line_never_overflowing() {
        let cases = [
            ("0 18446744073709551000 8 w", TraceFormat::Plain, "ends beyond the largest disk"),
            ("0 0 18446744073709551615 w", TraceFormat::Plain, "longer than"),
            ("0 0 9223372036854775808 r", TraceFormat::Plain, "longer than"),
            ("1e300 0 1 w", TraceFormat::Plain, "beyond the latest time"),
            ("1,18000000000,2a,512,1", TraceFormat::Cloudphysics, "beyond the latest time"),
            ("1,1,2a,512,18446744073709551615", TraceFormat::Cloudphysics, "ends beyond"),
            ("1,1,2a,18446744073709551104,0", TraceFormat::Cloudphysics, "longer than"),
            ("1,hm,1,Read,18446744073709551615,4096,1", TraceFormat::Msr, "Offset 18446744073709551615 + Size"),
            ("184467440737095517,hm,1,Read,0,4096,1", TraceFormat::Msr, "Timestamp 184467440737095517"),
            ("1,1,2a,512,99999999999999999999", TraceFormat::Cloudphysics, "below 2^64"),
        ];
        for (line, format, why) in cases {
            let error = parse(line, format, "bad").unwrap_err().to_string();
            assert!(error.starts_with("bad:1: ") && error.contains(why), "{line}: {error}");
        }
    }

    #[test]
    fn long_requests_are_split_like_a_guest_block_layer() {
        let trace = parse("0 100 20000 w\n1 0 8 r\n", TraceFormat::Plain, "p").unwrap();
        let piece = MAX_REQUEST_BYTES / 512;
        assert_eq!(trace.split, 1);
        assert_eq!(trace.requests.len(), 3 + 1);
        assert_eq!(
            trace.requests[0],
            TraceRequest { time_ns: 0, offset_sectors: 100, len_sectors: piece, op: TraceOp::Write }
        );
        assert_eq!(trace.requests[2].offset_sectors + trace.requests[2].len_sectors, 20100);
        assert_eq!(trace.extent_sectors, 20100);
    }

    #[test]
    fn the_shipped_cloudphysics_trace_parses_whole() {
        let trace = load(Path::new(BUILTIN_CLOUDPHYSICS), TraceFormat::Cloudphysics).unwrap();
        assert_eq!(trace.requests.len(), 113_872);
        assert_eq!(trace.requests.iter().filter(|r| r.op == TraceOp::Write).count(), 66_898);
        assert_eq!(trace.out_of_order, 0);
        assert!(
            trace.extent_sectors > 65_595_455 && trace.extent_sectors <= 65_595_455 + 136,
            "ends past the highest lbn"
        );
        // The file in data/ is the same trace, read through gzip from disk.
        let from_disk = load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/cloudphysics-vscsi.csv.gz"),
            TraceFormat::Cloudphysics,
        )
        .unwrap();
        assert_eq!(from_disk.requests, trace.requests);
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
            let back = parse(&text, TraceFormat::Plain, "rt.txt").unwrap().requests;
            let shifted: Vec<TraceRequest> = trace.iter().map(|r| TraceRequest { time_ns: r.time_ns - trace[0].time_ns, ..*r }).collect();
            prop_assert_eq!(back, shifted);
        }

        /// Any bytes, in any format: a trace or an error naming a line, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "[0-9a-fA-FrwRW,. #\r\n\u{feff}e+-]{0,200}", format in prop_oneof![Just(TraceFormat::Plain), Just(TraceFormat::Msr), Just(TraceFormat::Cloudphysics)]) {
            match parse(&text, format, "fuzz") {
                Ok(trace) => prop_assert!(trace.requests.iter().all(|r| r.len_sectors >= 1 && r.len_sectors <= MAX_REQUEST_BYTES / 512)),
                Err(error) => prop_assert!(error.to_string().starts_with("fuzz:")),
            }
        }
    }
}
