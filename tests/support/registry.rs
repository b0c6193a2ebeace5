//! A throwaway OCI registry for tests (hack/tools/registry-up), stopped on drop.

use super::{repo, tools_bin};
use std::path::PathBuf;
use std::process::Command;

/// A registry started by hack/tools/registry-up, stopped (and its data removed) on drop.
pub struct Registry {
    pub addr: String,
    pub dir: PathBuf,
}

impl Registry {
    pub fn up(args: &[&str]) -> Self {
        let o = Command::new(repo().join("hack/tools/registry-up"))
            .args(args)
            .env(
                "KOMPRESS_TOOLS_BIN",
                tools_bin("registry").parent().unwrap(),
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "registry-up {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let mut lines = out.lines();
        Self {
            addr: lines.next().unwrap().trim().into(),
            dir: PathBuf::from(lines.next().unwrap().trim()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("hack/tools/registry-down"))
            .arg(&self.dir)
            .env(
                "KOMPRESS_TOOLS_BIN",
                tools_bin("registry").parent().unwrap(),
            )
            .output();
    }
}
