//! Benchmark of the audit log: durable appends (one fsync per batch) and full verification.
//!
//!   cargo run --release -p portcullis-audit --example log_bench -- [RECORDS] [BATCH]
//!
//! Prints appends per second, verified records per second and proof sizes.

use std::time::Instant;

use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::verify_log;
use portcullis_crds::audit_log::LogSigner;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let batch: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| e.to_string())?;
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref())?;
    let mut log = Log::open(dir.path(), LogOptions::default())?;

    // A realistic record: about 400 bytes of JSON, as the sidecar writes them.
    let record = |i: u64| {
        format!(
            r#"{{"id":"agents/support-agent-5d9f7b6c4-x2kqp:{i}","version":"portcullis.dev/audit/v1alpha1","seq":{i},"time":"2026-11-23T05:40:00.{:06}Z","sessionId":"s-{}","identity":{{"kind":"ServiceAccount","name":"support-agent","namespace":"agents","pod":"support-agent-5d9f7b6c4-x2kqp"}},"resource":"customers-db","event":{{"type":"statement","statementId":{i},"protocol":"simple","statement":"SELECT id, email FROM customers WHERE id = ?","fingerprint":"5f2c1e0a9b7d3c4e","kinds":["select"],"tables":["public.customers"],"decision":"allow"}}}}"#,
            i % 1_000_000,
            i / 100
        )
        .into_bytes()
    };

    let start = Instant::now();
    let mut heads = 0;
    let mut last_head = Instant::now();
    let mut i = 0;
    while i < records {
        let n = batch.min(records - i);
        let entries: Vec<Vec<u8>> = (i..i + n).map(record).collect();
        log.append(&entries)?;
        i += n;
        if last_head.elapsed().as_millis() >= 1000 || i == records {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            log.record_head(&signer.sign(&log.head(now)))?;
            heads += 1;
            last_head = Instant::now();
        }
    }
    let append_secs = start.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(dir.path().join("segments"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    drop(log);

    let start = Instant::now();
    let v = verify_log(dir.path(), signer.public_key(), &[])?;
    let verify_secs = start.elapsed().as_secs_f64();

    let log = Log::open(dir.path(), LogOptions::default())?;
    let proof = log
        .inclusion_proof(records / 3, records)
        .map(|p| p.len())
        .unwrap_or(0);
    let consistency = log
        .consistency_proof(records / 2 + 1, records)
        .map(|p| p.len())
        .unwrap_or(0);

    println!("records                     {records}");
    println!("batch (records per fsync)   {batch}");
    println!("log bytes                   {bytes}");
    println!(
        "durable appends/s           {:.0}",
        records as f64 / append_secs
    );
    println!("signed tree heads           {heads}");
    println!(
        "verified records/s          {:.0}",
        v.entries as f64 / verify_secs
    );
    println!(
        "inclusion proof hashes      {proof} (log2 n = {:.1})",
        (records as f64).log2()
    );
    println!("consistency proof hashes    {consistency}");
    Ok(())
}
