//! The file provider: one YAML/TOML file, or every `.yml`/`.yaml`/`.toml`
//! file of a directory, polled for changes (modification time and size; no
//! inotify dependency, and it works on network filesystems such as /data).
//! A change that does not parse or validate is rejected with every problem
//! listed; the last good configuration keeps serving.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::{self, Dynamic, Format};
use crate::provider::Sink;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Location {
    /// One file.
    File(PathBuf),
    /// Every configuration file in a directory (not recursive).
    Directory(PathBuf),
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn files(loc: &Location) -> Result<Vec<PathBuf>, String> {
    match loc {
        Location::File(p) => Ok(vec![p.clone()]),
        Location::Directory(d) => {
            let rd = std::fs::read_dir(d).map_err(|e| {
                format!(
                    "reading directory {}: {e}; create it or fix --config-dir",
                    d.display()
                )
            })?;
            let mut out: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| Format::from_path(p).is_some())
                .filter(|p| {
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            out.sort();
            Ok(out)
        }
    }
}

fn fingerprint(loc: &Location) -> Fingerprint {
    let list = files(loc).unwrap_or_default();
    list.into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let mtime = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (p, mtime, len)
        })
        .collect()
}

/// Reads, parses, merges and validates. The error lists every problem with
/// the file it is in.
pub fn load(loc: &Location) -> Result<Dynamic, String> {
    let mut merged = Dynamic::default();
    let mut errors = Vec::new();
    for path in files(loc)? {
        let Some(format) = Format::from_path(&path) else {
            errors.push(format!(
                "{}: unknown format; name the file .yml, .yaml or .toml",
                path.display()
            ));
            continue;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match config::parse(&text, format) {
            Ok(cfg) => {
                if let Err(e) = merge(&mut merged, cfg) {
                    errors.push(format!("{}: {e}", path.display()));
                }
            }
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    for p in config::validate(&merged, "file") {
        errors.push(format!("{}: {p}", describe(loc)));
    }
    if errors.is_empty() {
        Ok(merged)
    } else {
        Err(errors.join("\n"))
    }
}

fn describe(loc: &Location) -> String {
    match loc {
        Location::File(p) | Location::Directory(p) => p.display().to_string(),
    }
}

fn merge_map<T>(
    into: &mut BTreeMap<String, T>,
    from: BTreeMap<String, T>,
    what: &str,
) -> Result<(), String> {
    for (k, v) in from {
        if into.contains_key(&k) {
            return Err(format!("{what} {k:?} is defined in two files: rename one"));
        }
        into.insert(k, v);
    }
    Ok(())
}

fn merge(into: &mut Dynamic, from: Dynamic) -> Result<(), String> {
    merge_map(&mut into.http.routers, from.http.routers, "router")?;
    merge_map(&mut into.http.services, from.http.services, "service")?;
    merge_map(
        &mut into.http.middlewares,
        from.http.middlewares,
        "middleware",
    )?;
    into.tls.certificates.extend(from.tls.certificates);
    Ok(())
}

/// Watches `loc` and pushes each good version to `sink`, polling every
/// `interval`. The first load happens at once.
pub async fn run(loc: Location, interval: Duration, sink: Sink, mut shutdown: b3_common::Shutdown) {
    let mut seen: Option<Fingerprint> = None;
    loop {
        let fp = fingerprint(&loc);
        if seen.as_ref() != Some(&fp) {
            seen = Some(fp);
            let ok = match load(&loc) {
                Ok(cfg) => sink.push(cfg).await,
                Err(e) => sink.reject(e).await,
            };
            if !ok {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "http:\n  routers:\n    a: { rule: \"Host(`a`)\", service: s }\n  services:\n    s: { loadBalancer: { servers: [ { url: \"http://127.0.0.1:1\" } ] } }\n";

    #[test]
    fn directory_files_merge_and_clashes_are_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yml"), GOOD).unwrap();
        std::fs::write(
            d.path().join("b.toml"),
            "[http.routers.b]\nrule = \"Host(`b`)\"\nservice = \"s\"\n",
        )
        .unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let cfg = load(&Location::Directory(d.path().into())).unwrap();
        assert_eq!(cfg.http.routers.len(), 2);
        std::fs::write(d.path().join("c.yml"), GOOD).unwrap();
        let e = load(&Location::Directory(d.path().into())).unwrap_err();
        assert!(
            e.contains("c.yml") && e.contains("defined in two files"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("edge.yml");
        std::fs::write(
            &f,
            "http:\n  routers:\n    a: { rule: \"Host(a)\", service: s }\n",
        )
        .unwrap();
        let e = load(&Location::File(f.clone())).unwrap_err();
        assert!(e.contains("edge.yml"), "{e}");
        assert!(e.contains("http.routers.a.rule"), "{e}");
        assert!(e.contains("http.routers.a.service"), "{e}");
        std::fs::write(&f, "http: [oops").unwrap();
        let e = load(&Location::File(f)).unwrap_err();
        assert!(e.contains("edge.yml") && e.contains("line"), "{e}");
    }

    #[tokio::test]
    async fn reload_pushes_good_versions_and_rejects_bad_ones() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("edge.yml");
        std::fs::write(&f, GOOD).unwrap();
        let mut source = crate::provider::Source::new();
        let (trigger, shutdown) = b3_common::shutdown::channel();
        let task = tokio::spawn(run(
            Location::File(f.clone()),
            Duration::from_millis(20),
            source.sink("file"),
            shutdown,
        ));
        async fn next(s: &mut crate::provider::Source) -> Vec<crate::provider::Update> {
            tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .unwrap()
        }
        let u = next(&mut source).await;
        assert!(
            matches!(&u[0], crate::provider::Update::Config { config, .. } if config.http.routers.len() == 1)
        );
        std::fs::write(
            &f,
            "http:\n  routers:\n    a: { rule: \"Nope(`a`)\", service: s }\n",
        )
        .unwrap();
        let u = next(&mut source).await;
        assert!(
            matches!(&u[0], crate::provider::Update::Rejected { error, .. } if error.contains("unknown matcher Nope")),
            "{u:?}"
        );
        std::fs::write(&f, GOOD.replace("Host(`a`)", "Host(`a2`)")).unwrap();
        let u = next(&mut source).await;
        assert!(
            matches!(&u[0], crate::provider::Update::Config { config, .. } if config.http.routers["a"].rule.contains("a2"))
        );
        trigger.trigger();
        task.await.unwrap();
    }
}
