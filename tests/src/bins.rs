//! Paths to the workspace's own binaries (`store`, `edge`, `vip`) for
//! cross-binary tests. Cargo builds them before running the tests of this
//! package; they sit next to the test executable's `deps/` directory.

use std::path::PathBuf;

/// Path of workspace binary `name`, e.g. `bin("store")`.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).ok_or_else(|| {
        anyhow::anyhow!("cannot locate the target directory from {}", exe.display())
    })?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        anyhow::bail!(
            "{} not found: build the workspace binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}
