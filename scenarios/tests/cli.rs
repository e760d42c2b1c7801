//! The `fvdsim` command line as a user meets it: options without the subcommand, traces sized
//! and labelled by what they are, bad arguments caught before a run, repro verdicts.

use std::path::Path;
use std::process::{Command, Output};

fn fvdsim(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fvdsim")).args(args).current_dir(dir).output().expect("fvdsim runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn run_options_work_without_the_run_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = fvdsim(dir.path(), &["--seed", "5", "--requests", "300", "--crashes", "2", "--quiet", "--out", "o"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("verified: cloudphysics seed 0x0000000000000005"), "{}", text(&output));
}

#[test]
fn a_user_trace_is_sized_to_its_extent_and_named_in_every_output() {
    let dir = tempfile::tempdir().unwrap();
    // A request 40 GiB into the disk: beyond the main job's 32 GiB disk, so it used to be folded.
    std::fs::write(dir.path().join("far-disk.txt"), "0 0 8 w\n1 83886080 8 w\n2 83886080 8 r\n").unwrap();
    let args = ["--trace", "far-disk.txt", "--trace-format", "plain", "--crashes", "1"];
    let output = fvdsim(dir.path(), &[&args[..], &["--out", "o"]].concat());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let out = text(&output);
    assert!(out.contains("fvdsim far-disk seed"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("o/report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["folded"], 0);
    assert_eq!(report["config"]["image"]["size_bytes"], 40u64 * (1 << 30) + (1 << 20));
    let html = std::fs::read_to_string(dir.path().join("o/index.html")).unwrap();
    assert!(html.contains("far-disk seed"), "the page names the trace");
    assert!(html.contains("far-disk.txt (plain format), open loop at time scale 0.01"), "and how it replays");
    // A disk too small for it: refused before the run, naming the request.
    let small = fvdsim(dir.path(), &[&args[..], &["--size", "1G", "--out", "s"]].concat());
    assert_eq!(small.status.code(), Some(3), "{}", text(&small));
    assert!(text(&small).contains("request 2 (sectors 83886080..83886088) does not fit"), "{}", text(&small));
    let wrapped = fvdsim(dir.path(), &[&args[..], &["--size", "1G", "--wrap", "--out", "w"]].concat());
    assert_eq!(wrapped.status.code(), Some(0), "{}", text(&wrapped));
    assert!(text(&wrapped).contains("2 folded onto the disk"), "{}", text(&wrapped));
}

#[test]
fn bad_arguments_are_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    for (args, expected) in [
        (vec!["--out", "a-file"], "exists and is not a directory"),
        (vec!["--out", "a-file/below"], "cannot create the directory"),
        (vec!["--requests", "0"], "0 is not in 1.."),
        (vec!["run", "--queue-depth", "0"], "0 is not in 1.."),
    ] {
        let output = fvdsim(dir.path(), &args);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(expected), "{args:?}: {}", text(&output));
    }
}

#[test]
fn repro_says_whether_the_failure_reproduced_and_refuses_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let failing = fvdsim(
        dir.path(),
        &["run", "--profile", "v1", "--requests", "8000", "--crashes", "3", "--quiet", "--out", "o"],
    );
    assert_eq!(failing.status.code(), Some(1), "v1 fails on the trace: {}", text(&failing));
    let failure_file = std::fs::read_dir(dir.path().join("o"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("failure-cloudphysics-"))
        .expect("a failure file");
    // The run's page shows the failure itself, not just a link: class, message, the failing
    // sectors and the command that replays it.
    let failure: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&failure_file).unwrap()).unwrap();
    let html = std::fs::read_to_string(dir.path().join("o/index.html")).unwrap();
    let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let class = failure["failure"]["class"].as_str().unwrap();
    assert!(html.contains(&format!("<h2>Failure: {class}</h2>")), "{html}");
    assert!(html.contains(&escape(failure["failure"]["message"].as_str().unwrap())), "{html}");
    let repro = failure["repro_command"].as_str().unwrap();
    assert!(repro.starts_with("fvdsim repro ") && repro.ends_with(".json"), "{repro}");
    assert!(html.contains(&format!("<code>{}</code>", escape(repro))), "{html}");
    assert!(class != "wrong-data" || failure["failure"]["sectors"].get(0).is_some(), "wrong data names its sectors");
    if let Some(sector) = failure["failure"]["sectors"].get(0) {
        assert!(html.contains("<th>sector</th><th>allowed values</th><th>actual</th>"), "{html}");
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            sector["sector"],
            sector["allowed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| escape(a.as_str().unwrap()))
                .collect::<Vec<_>>()
                .join("<br>"),
            escape(sector["actual"].as_str().unwrap())
        );
        assert!(html.contains(&row), "no row {row} in {html}");
    }
    let replay = fvdsim(dir.path(), &["repro", failure_file.to_str().unwrap(), "--out", "r"]);
    assert_eq!(replay.status.code(), Some(1));
    assert!(text(&replay).contains("reproduced: same failure, same event-log hash 0x"), "{}", text(&replay));
    let report = fvdsim(dir.path(), &["repro", "o/report.json"]);
    assert_eq!(report.status.code(), Some(3));
    assert!(text(&report).contains("is a run report (report.json), not a failure file"), "{}", text(&report));
}

#[test]
fn ctrl_c_writes_the_partial_report_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fvdsim"))
        .args(["--out", "o"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fvdsim starts");
    // Wait until the run is under way (the out directory is made before the run starts).
    let started = std::time::Instant::now();
    while !dir.path().join("o").exists() && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    assert!(text(&output).contains("INTERRUPTED after"), "{}", text(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("o/report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["interrupted"], true);
    assert!(report["summary"]["issued"].as_u64().unwrap() < 113_872);
}

#[test]
fn a_prefetch_study_tunes_on_the_built_in_trace_with_the_flags_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = fvdsim(
        dir.path(),
        &[
            "prefetch-study",
            "--trace",
            "cloudphysics",
            "--requests",
            "3000",
            "--min-kb-s",
            "80000",
            "--profile",
            "hardened",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--min-kb-s 80000"), "the setting is named by its flag: {stdout}");
    assert!(stdout.contains("closest to the goal"), "{stdout}");
    let index = std::fs::read_to_string(dir.path().join("fvdsim-study/index.html")).unwrap();
    assert!(index.contains("trace builtin:cloudphysics-vscsi"), "the page says what workload it tuned on");
    let missing = fvdsim(dir.path(), &["prefetch-study", "--trace", "no-such-trace.csv"]);
    assert_eq!(missing.status.code(), Some(3), "a usage error");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--trace no-such-trace.csv"));
}
