//! Throughput of exec output through the live masking path: the terminal-emulator scanner
//! and, in the same run, the hand-written screen model it replaced.
//!
//! `cargo run --release -p portcullis-sidecar --example exec_throughput [MiB]` prints MB/s for
//! each on the same output (coloured `ls`-like lines with an e-mail address every tenth line,
//! in 16 KiB frames) and their ratio.

mod legacy_screen;

use std::time::Instant;

use portcullis_sidecar::kube::recording::OutputMasker;
use portcullis_sidecar::kube::screen::{Direction, Scanner};

fn output(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 200);
    let mut i = 0u64;
    while out.len() < bytes {
        let line = if i.is_multiple_of(10) {
            format!("\x1b[01;34mdir{i}\x1b[0m  owner alice{i}@example.com  4096 Dec  7 12:00\r\n")
        } else {
            format!("-rw-r--r-- 1 app app {i:>8} Dec  7 12:00 \x1b[01;32mfile-{i}.log\x1b[0m\r\n")
        };
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let data = output(mib << 20);
    let masker = match OutputMasker::new(&[]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("detectors: {e}");
            std::process::exit(1);
        }
    };
    let frames: Vec<&[u8]> = data.chunks(16 * 1024).collect();
    let mb = data.len() as f64 / 1e6;

    let start = Instant::now();
    let mut scanner = Scanner::new(Direction::Output);
    let mut out = 0usize;
    for f in &frames {
        out += scanner.push(&masker, f).len();
    }
    out += scanner.flush(&masker).len();
    let emulator = mb / start.elapsed().as_secs_f64();
    assert_eq!(out, data.len());

    let start = Instant::now();
    let mut legacy = legacy_screen::Scanner::new(legacy_screen::Direction::Output);
    let mut out = 0usize;
    for f in &frames {
        out += legacy.push(&masker, f).len();
    }
    out += legacy.flush(&masker).len();
    let hand_written = mb / start.elapsed().as_secs_f64();
    assert_eq!(out, data.len());

    println!("exec output, {mb:.1} MB in 16 KiB frames");
    println!("terminal emulator (avt): {emulator:.1} MB/s");
    println!("hand-written model:      {hand_written:.1} MB/s");
    println!(
        "ratio emulator / hand-written: {:.2}",
        emulator / hand_written
    );
}
