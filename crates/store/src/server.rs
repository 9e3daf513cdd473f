//! `store server`: one storage node.

use std::sync::Arc;

use anyhow::Context;
use b3_common::{admin, AdminServer, HealthStatus, Shutdown};

use crate::cli::ServerArgs;

/// Runs a storage node until `shutdown` fires.
pub async fn run(args: ServerArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    prepare_data_dir(&args.data_dir)?;
    let registry = admin::registry("store", env!("CARGO_PKG_VERSION"));
    let data_dir = args.data_dir.clone();
    let health: b3_common::Health = Arc::new(move || {
        if data_dir.is_dir() {
            HealthStatus::Ok
        } else {
            HealthStatus::Failing(format!("data directory {} is gone", data_dir.display()))
        }
    });
    let admin = AdminServer::bind(
        args.admin_addr,
        "store",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?;
    tracing::info!(data_dir = %args.data_dir.display(), admin = %admin.local_addr()?, "store server started");
    admin.serve(shutdown).await;
    tracing::info!("store server stopped");
    Ok(())
}

/// Creates the data directory and proves it is writable, so a read-only or
/// mistyped path fails at start-up rather than on the first write.
fn prepare_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating data directory {} (choose another with --data-dir or STORE_DATA_DIR)",
            dir.display()
        )
    })?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_data_dir_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_data_dir(&file.join("sub")).unwrap_err();
        assert!(format!("{err:#}").contains("--data-dir"), "{err:#}");
        prepare_data_dir(&tmp.path().join("fresh")).unwrap();
        assert!(tmp.path().join("fresh").is_dir());
    }
}
