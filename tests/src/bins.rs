//! Paths to the workspace's own binaries (`store`, `edge`, `vip`) for
//! cross-binary tests. Cargo builds them before running the tests of this
//! package; they sit next to the test executable's `deps/` directory.

use std::path::PathBuf;

/// Path of workspace binary `name`, e.g. `bin("store")`: next to the
/// running executable (a benchmark in `target/<profile>/`), or one level up
/// (a test in `target/<profile>/deps/`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().ok_or_else(|| {
        anyhow::anyhow!("cannot locate the target directory from {}", exe.display())
    })?;
    let candidates = [Some(here), here.parent()];
    for dir in candidates.into_iter().flatten() {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    anyhow::bail!(
        "{name} not found next to {}: build the workspace binaries first (`cargo build --workspace --bins`)",
        exe.display()
    )
}
