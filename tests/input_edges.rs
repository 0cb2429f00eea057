//! Plan files at the edges of what a text file is: bytes that are not UTF-8, and a line far too
//! long to echo. Both still get a located error, rendered with a readable snippet.

use crate::common::{phased_cmd, scratch_dir};

/// A plan whose third line holds the byte 0xFF after `pla` (an invalid UTF-8 start byte).
#[test]
fn a_non_utf8_plan_names_the_byte_offset_line_and_column() {
    let dir = scratch_dir();
    let file = dir.join("latin1.yaml");
    let mut bytes = b"plan: demo\ndescription: caf".to_vec();
    bytes.push(0xE9); // `é` in Latin-1: not UTF-8
    bytes.extend_from_slice(b"\nphases: []\n");
    std::fs::write(&file, &bytes).expect("write the plan");
    let out = phased_cmd()
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run phased validate");
    assert_eq!(out.status.code(), Some(2), "exit 2: an invalid plan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Byte 27 (0-based) is the 17th character of line 2.
    assert!(
        stderr.contains("latin1.yaml:2:17:"),
        "the error is located at line 2, column 17:\n{stderr}"
    );
    assert!(
        stderr.contains("byte offset 27") && stderr.contains("0xE9"),
        "the error names the byte and its offset:\n{stderr}"
    );
    assert!(
        stderr.contains("description: caf"),
        "the line is shown:\n{stderr}"
    );
}

/// An error on a 400 KB line shows a window of the line around the column, with the caret under
/// the offending key, not the whole line.
#[test]
fn an_error_on_a_400kb_line_shows_a_window_around_the_column() {
    let long = "x".repeat(400_000);
    let yaml = format!(
        "plan: demo\nphases:\n  - name: c\n    kind: contract\n    steps:\n      - sql: {{ up: \"SELECT '{long}'\", nope: 1 }}\n"
    );
    let report = match phased::plan::parse_str("long.yaml", &yaml, &scratch_dir()) {
        Ok(_) => panic!("the plan has an unknown field and must be refused"),
        Err(report) => report.render_plain(),
    };
    assert!(
        report.len() < 4_000,
        "the snippet is cut ({} bytes):\n{}",
        report.len(),
        report.get(..4_000).unwrap_or(&report)
    );
    let column = yaml
        .lines()
        .nth(5)
        .and_then(|l| l.find("nope"))
        .expect("nope on line 6")
        + 1;
    assert!(
        report.contains(&format!("long.yaml:6:{column}")),
        "the headline keeps the real column {column}:\n{report}"
    );
    // The caret (the start of the underline) stands under `nope` in the shown line.
    let lines: Vec<&str> = report.lines().collect();
    let shown = lines
        .iter()
        .position(|l| l.contains("nope: 1"))
        .unwrap_or_else(|| panic!("the offending key is shown:\n{report}"));
    let key_at = lines[shown]
        .chars()
        .collect::<Vec<_>>()
        .windows(4)
        .position(|w| w.iter().collect::<String>() == "nope")
        .expect("nope");
    let mark = lines[shown + 1]
        .chars()
        .position(|c| matches!(c, '─' | '┬' | '^'))
        .unwrap_or_else(|| panic!("an underline below the line:\n{report}"));
    assert_eq!(key_at, mark, "the caret is under `nope`:\n{report}");
}
