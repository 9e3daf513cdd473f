//! `store status`, `store nodes`, `store df`: ask any node's admin endpoint
//! and print a table (or the JSON with `--json`).

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{Df, NodeStatus, Status};
use crate::cli::ClientArgs;

/// Largest admin response read.
const MAX_RESPONSE: u64 = 16 << 20;

/// GETs `path` from the admin endpoint `server` and returns the body.
pub async fn get(server: &str, path: &str) -> anyhow::Result<String> {
    request(server, "GET", path).await
}

/// Sends a body-less `method` request for `path` and returns the body.
pub async fn request(server: &str, method: &str, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(server)
            .await
            .with_context(|| format!("connecting to the store admin endpoint {server} (is `store server` running there? choose another with --server or STORE_SERVER)"))?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        (&mut s).take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(15), fetch)
        .await
        .with_context(|| format!("{server} did not answer {path} within 15 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{server} sent a malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        anyhow::bail!("{server}{path} answered {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(server: &str, body: &str) -> anyhow::Result<T> {
    serde_json::from_str(body).with_context(|| {
        format!("{server} sent JSON this `store` does not understand (version mismatch?)")
    })
}

/// `store status`.
pub async fn status(args: &ClientArgs) -> anyhow::Result<()> {
    let body = get(&args.server, "/v1/status").await?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let s: Status = parse(&args.server, &body)?;
    println!("  cluster: {}", s.cluster_id);
    println!("   health: {}", s.health);
    for c in &s.checks {
        println!("           {c}");
    }
    let leader = s
        .raft
        .leader
        .map(|l| format!("{l:016x}"))
        .unwrap_or_else(|| "none".into());
    println!(
        "   quorum: {} (leader {leader}, term {}, {} voters, {} learners)",
        if s.quorum { "yes" } else { "NO" },
        s.raft.term,
        s.raft.voters.len(),
        s.raft.learners.len()
    );
    println!(
        "    nodes: {} total, {} up, {} in (map epoch {})",
        s.nodes_total, s.nodes_up, s.nodes_in, s.epoch
    );
    println!(
        "      pgs: {} total: {} clean, {} degraded, {} inactive (size {}, min_size {})",
        s.pgs_total, s.pgs_clean, s.pgs_degraded, s.pgs_inactive, s.size, s.min_size
    );
    println!("  objects: {}", s.objects);
    if let Some(m) = &s.maint {
        crate::maint::cli::print_status(m, s.pgs_total);
    }
    Ok(())
}

/// `store nodes`.
pub async fn nodes(args: &ClientArgs) -> anyhow::Result<()> {
    let body = get(&args.server, "/v1/nodes").await?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let nodes: Vec<NodeStatus> = parse(&args.server, &body)?;
    println!(
        "{:<16}  {:<21}  {:<16}  {:>6}  {:<4}  {:<3}  RAFT",
        "ID", "ADDRESS", "DOMAIN", "WEIGHT", "UP", "IN"
    );
    for n in nodes {
        println!(
            "{:<16}  {:<21}  {:<16}  {:>6}  {:<4}  {:<3}  {}",
            n.id,
            n.addr,
            n.domain,
            n.weight,
            if n.up { "up" } else { "down" },
            if n.is_in { "in" } else { "out" },
            n.raft
        );
    }
    Ok(())
}

fn human(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `store df`.
pub async fn df(args: &ClientArgs) -> anyhow::Result<()> {
    let body = get(&args.server, "/v1/df").await?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let d: Df = parse(&args.server, &body)?;
    println!(
        "RAW: {} used of {} ({} available)",
        human(d.raw_used),
        human(d.raw_total),
        human(d.raw_avail)
    );
    println!(
        "OBJECTS: {} objects, {} stored, size {}",
        d.objects,
        human(d.stored),
        d.size
    );
    println!(
        "{:<16}  {:>8}  {:>10}  {:>10}  {:>10}",
        "NODE", "CHUNKS", "USED", "AVAIL", "TOTAL"
    );
    for n in d.nodes {
        match n.usage {
            Some(u) => println!(
                "{:<16}  {:>8}  {:>10}  {:>10}  {:>10}",
                n.id,
                u.chunks,
                human(u.bytes),
                human(u.fs_avail),
                human(u.fs_total)
            ),
            None => println!("{:<16}  unreachable: {}", n.id, n.error.unwrap_or_default()),
        }
    }
    Ok(())
}

/// `store remove-node`, `store out`, `store in`.
pub async fn change_node(args: &ClientArgs, id: &str, action: &str) -> anyhow::Result<()> {
    let (method, path) = match action {
        "remove" => ("DELETE", format!("/v1/nodes/{id}")),
        other => ("POST", format!("/v1/nodes/{id}/{other}")),
    };
    let body = request(&args.server, method, &path).await?;
    if args.json {
        print!("{body}");
    } else {
        let v: serde_json::Value = parse(&args.server, &body)?;
        println!("node {id}: {action} done (map epoch {})", v["epoch"]);
    }
    Ok(())
}
