//! Durable writes: every file aligngym produces is written under a temporary name in its final
//! folder, flushed to disk (`fsync`), and renamed into place; folders (checkpoints, run states) are
//! staged whole and swapped in with a recovery rule, so a kill or a full disk at any instant leaves
//! either the old version or the new one, never a mix, and no temporaries once the command ends.

use crate::{AgentError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder a path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Suffixes of aligngym's staging names: distinctive, so that what [`Staged`], [`recover`] and
/// [`remove_stale_temporaries`] delete or rename is only ever something aligngym made, never a
/// user's `.model.tmp` beside an `--out model`.
const TMP: &str = ".aligngym-tmp";
const OLD: &str = ".aligngym-old";

/// `path`'s sibling `.{name}{suffix}`: hidden, in the same folder (so a rename never crosses a
/// file system).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}{suffix}"))
}

/// Flush a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| AgentError::io(path, e))
}

/// Flush a folder's entries (names created, renamed or removed in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot fsync a directory; their renames are as durable as they get.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(AgentError::io(dir, e)),
    }
}

/// Flush every file under `dir`, then every folder, bottom up.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| AgentError::io(dir, e))? {
        let entry = entry.map_err(|e| AgentError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| AgentError::io(&path, e))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            sync_file(&path)?;
        }
    }
    sync_dir(dir)
}

/// Remove the temporaries of [`write_atomic`] for `names` in `dir` (`.NAME.aligngym-tmp-DIGITS`)
/// that a killed process left behind; nothing else is touched.
pub fn remove_stale_temporaries(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let ours = names.iter().any(|n| {
            file.strip_prefix(&format!(".{n}{TMP}-"))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        if ours && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Write `bytes` to `path` durably: a temporary sibling, fsync, rename, fsync of the folder. On
/// failure the temporary is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // The PID and the clock's nanoseconds: unique among the writers of one file even when they
    // are processes of different machines on a shared filesystem (a cluster's merge jobs).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = sibling(path, &format!("{TMP}-{}{nanos:09}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| AgentError::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_of(path))
}

/// A folder being written under a temporary name; removed when dropped unless committed, so an
/// error anywhere (a full disk included) leaves nothing behind.
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Stage a new version of `target` in `tmp` (emptied first).
    pub fn new(target: &Path, tmp: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        Ok(Self {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Stage a new version of `target` in its sibling `.{name}.aligngym-tmp` (a fixed name, so that
    /// [`recover`] can finish a swap a kill interrupted; an earlier one is finished first).
    pub fn for_dir(target: &Path) -> Result<Self> {
        recover(target)?;
        Self::new(target, sibling(target, TMP))
    }

    /// Where to write the new version's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Flush everything staged and swap it in for the target: the old version is renamed aside,
    /// the new one into place, the folder flushed, the old version removed. A kill between the two
    /// renames leaves the complete new version staged and the old one aside, which [`recover`]
    /// resolves in favour of the new one.
    pub fn commit(mut self) -> Result<()> {
        sync_tree(&self.tmp)?;
        let old = sibling(&self.target, OLD);
        let _ = std::fs::remove_dir_all(&old);
        if self.target.exists() {
            std::fs::rename(&self.target, &old).map_err(|e| AgentError::io(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| AgentError::io(&self.target, e))?;
        self.committed = true;
        sync_dir(parent_of(&self.target))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Finish or undo a swap of `target` that a kill interrupted ([`Staged::for_dir`] names): with
/// the target missing and its old version aside, the staged version is complete (it is renamed
/// aside only after that) and becomes the target; leftovers of a finished swap are removed.
pub fn recover(target: &Path) -> Result<()> {
    let tmp = sibling(target, TMP);
    let old = sibling(target, OLD);
    if !target.exists() && old.exists() {
        let from = if tmp.exists() { &tmp } else { &old };
        std::fs::rename(from, target).map_err(|e| AgentError::io(target, e))?;
        sync_dir(parent_of(target))?;
    }
    let _ = std::fs::remove_dir_all(&old);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// An exclusive lock on a file (`flock`): held until dropped, and released by the kernel when the
/// process dies however it dies, so a kill never leaves a stale lock behind. The (empty) lock file
/// stays: removing it while another process waits on it would let two hold "the" lock.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn open(path: &Path) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| AgentError::io(path, e))
    }

    /// Wait for the lock on `path` (created when missing).
    pub fn exclusive(path: &Path) -> Result<Lock> {
        let f = Self::open(path)?;
        f.lock().map_err(|e| AgentError::io(path, e))?;
        Ok(Lock { _file: f })
    }

    /// The lock on `path` if no one holds it now; `None` when another process (or another
    /// handle in this one) does.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let f = Self::open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(AgentError::io(path, e)),
        }
    }

    /// Whether someone holds the lock on `path` now (a missing file: no one).
    pub fn is_held(path: &Path) -> bool {
        path.exists() && matches!(Self::try_exclusive(path), Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn an_interrupted_swap_is_finished_and_only_our_temporaries_go() {
        let d = std::env::temp_dir().join(format!("aligngym-fsio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let target = d.join("state");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("a"), "old").unwrap();
        // A kill between the two renames of a commit: the new version staged, the old one aside.
        let tmp = sibling(&target, TMP);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("a"), "new").unwrap();
        std::fs::rename(&target, sibling(&target, OLD)).unwrap();
        recover(&target).unwrap();
        assert_eq!(read(&target.join("a")), "new");
        assert!(!tmp.exists() && !sibling(&target, OLD).exists());
        // A version staged and dropped (an error on the way) leaves the target as it was.
        {
            let s = Staged::for_dir(&target).unwrap();
            std::fs::write(s.path().join("a"), "half").unwrap();
        }
        assert_eq!(read(&target.join("a")), "new");
        assert!(!tmp.exists());
        // A committed one replaces it.
        let s = Staged::for_dir(&target).unwrap();
        std::fs::write(s.path().join("a"), "next").unwrap();
        s.commit().unwrap();
        assert_eq!(read(&target.join("a")), "next");
        // A user's folders that merely look like staging names are neither removed nor renamed.
        let users = d.join("model");
        for suffix in [".tmp", ".old"] {
            std::fs::create_dir_all(sibling(&users, suffix)).unwrap();
        }
        recover(&users).unwrap();
        assert!(!users.exists());
        assert!(sibling(&users, ".tmp").exists() && sibling(&users, ".old").exists());
        for suffix in [".tmp", ".old"] {
            std::fs::remove_dir_all(sibling(&users, suffix)).unwrap();
        }
        // Stale temporaries of write_atomic for the named files go; anything else stays.
        write_atomic(&d.join("metrics.csv"), b"x").unwrap();
        let names = [
            ".metrics.csv.aligngym-tmp-123",
            ".notes.aligngym-tmp-7",
            ".metrics.csv.tmp-123",
            "notes.tmp-1",
        ];
        for name in names {
            std::fs::write(d.join(name), "").unwrap();
        }
        remove_stale_temporaries(&d, &["metrics.csv"]);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".metrics.csv.tmp-123",
                ".notes.aligngym-tmp-7",
                "metrics.csv",
                "notes.tmp-1",
                "state"
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_lock_excludes_until_dropped() {
        let d = std::env::temp_dir().join(format!("aligngym-lock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(".run.lock");
        assert!(!Lock::is_held(&p));
        let held = Lock::exclusive(&p).unwrap();
        assert!(Lock::is_held(&p));
        assert!(Lock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(!Lock::is_held(&p));
        assert!(Lock::try_exclusive(&p).unwrap().is_some());
        let _ = std::fs::remove_dir_all(&d);
    }
}
