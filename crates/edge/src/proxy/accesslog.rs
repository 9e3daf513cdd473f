//! Access log: one line per request, in Common Log Format (plus router,
//! service and duration, as Traefik writes it) or JSON, written to stdout
//! by a background task so a slow terminal never slows requests. When the
//! queue is full, lines are dropped and counted rather than blocking.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Version;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Lines queued before dropping.
const QUEUE: usize = 8192;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// No access log.
    Off,
    /// Common Log Format with router, service and duration appended.
    Common,
    /// One JSON object per line.
    Json,
}

/// A finished request.
pub struct Entry<'a> {
    /// Client address.
    pub client: IpAddr,
    /// Method.
    pub method: &'a str,
    /// Request target.
    pub uri: &'a str,
    /// HTTP version.
    pub version: Version,
    /// Host header.
    pub host: &'a str,
    /// Status code.
    pub status: u16,
    /// Body size, when known up front.
    pub bytes: Option<u64>,
    /// Time to response headers.
    pub duration: Duration,
    /// Router.
    pub router: Option<&'a str>,
    /// Service.
    pub service: Option<&'a str>,
    /// Entry point.
    pub entrypoint: &'a str,
}

/// Handle to the access log writer.
#[derive(Clone)]
pub struct AccessLog {
    format: Format,
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer task (stdout). `None` for [`Format::Off`].
    pub fn start(format: Format) -> Option<AccessLog> {
        if format == Format::Off {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(line) = rx.recv().await {
                let mut buf = line.into_bytes();
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(more.as_bytes());
                    if buf.len() > 64 * 1024 {
                        break;
                    }
                }
                if out.write_all(&buf).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
            }
        });
        Some(AccessLog {
            format,
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues a line for `e`.
    pub fn record(&self, e: Entry<'_>) {
        let line = format_line(self.format, &e, SystemTime::now());
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Formats one line (with its newline).
pub fn format_line(format: Format, e: &Entry<'_>, now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "time": secs,
                "ClientHost": e.client.to_string(),
                "RequestMethod": e.method,
                "RequestPath": e.uri,
                "RequestProtocol": version_str(e.version),
                "RequestHost": e.host,
                "DownstreamStatus": e.status,
                "DownstreamContentSize": e.bytes,
                "Duration": e.duration.as_nanos() as u64,
                "RouterName": e.router,
                "ServiceName": e.service,
                "entryPointName": e.entrypoint,
            });
            format!("{v}\n")
        }
        _ => {
            let (d, h, m, s) = civil(secs);
            let q = |s: &str| s.replace('"', "%22");
            format!(
                "{} - - [{d}:{h:02}:{m:02}:{s:02} +0000] \"{} {} {}\" {} {} \"{}\" \"{}\" {}ms\n",
                e.client,
                e.method,
                q(e.uri),
                version_str(e.version),
                e.status,
                e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                e.router.unwrap_or("-"),
                e.service.unwrap_or("-"),
                e.duration.as_millis()
            )
        }
    }
}

/// `dd/Mon/yyyy:` date, hours, minutes, seconds (UTC) for CLF.
fn civil(secs: u64) -> (String, u64, u64, u64) {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    (
        format!("{d:02}/{}/{y}", MON[(m - 1) as usize]),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: "10.0.0.1".parse().unwrap(),
            method: "GET",
            uri: "/x?y=1",
            version: Version::HTTP_11,
            host: "app.b3.swarm",
            status: 200,
            bytes: Some(12),
            duration: Duration::from_millis(3),
            router: Some("app@file"),
            service: Some("app@file"),
            entrypoint: "websecure",
        }
    }

    #[test]
    fn common_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let l = format_line(Format::Common, &entry(), t);
        assert_eq!(
            l,
            "10.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /x?y=1 HTTP/1.1\" 200 12 \"app@file\" \"app@file\" 3ms\n"
        );
    }

    #[test]
    fn json_format() {
        let l = format_line(Format::Json, &entry(), SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["DownstreamStatus"], 200);
        assert_eq!(v["RouterName"], "app@file");
        assert_eq!(v["RequestHost"], "app.b3.swarm");
    }
}
