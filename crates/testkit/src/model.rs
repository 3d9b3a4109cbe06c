//! The durability model: which state survives a power cut. Pure bookkeeping, no I/O.
//!
//! [`Model`] is told every successful mutation of the live file system (create, write, truncate,
//! rename, unlink, mkdir, rmdir) and every fsync. It keeps, per inode, what is *durable*:
//!
//! - a file's data: its length at the last fsync/fdatasync and the byte ranges written or truncated
//!   since ([`RangeSet`]); the bytes themselves live elsewhere (the FUSE layer keeps a shadow copy
//!   per inode, updated from the [`SyncPlan`] that [`Model::fsync_plan`] returns);
//! - a directory's entries: the `name → inode` map as of the last fsync of that directory.
//!
//! [`Model::durable_image`] walks the durable entries from the root and says what a power cut
//! leaves: which paths exist, and for each file which inode's durable bytes (and how many) it holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

/// An inode number of the model (and of the FUSE mount). Never reused.
pub type Ino = u64;

/// The inode of the root directory.
pub const ROOT: Ino = 1;

/// What an inode is. Symlinks, hard links and special files are not modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Why the model refused an operation: it disagrees with the live file system it mirrors (the
/// FUSE layer only reports operations that succeeded there), or the caller asked for the
/// impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelError {
    /// No such inode or name.
    NotFound,
    /// A directory was expected.
    NotDir,
    /// A file was expected.
    IsDir,
    /// The name is taken.
    Exists,
    /// The directory still has entries.
    NotEmpty,
    /// Not possible in this model (e.g. renaming the root).
    Invalid,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ModelError::NotFound => "no such file or directory",
            ModelError::NotDir => "not a directory",
            ModelError::IsDir => "is a directory",
            ModelError::Exists => "already exists",
            ModelError::NotEmpty => "directory not empty",
            ModelError::Invalid => "invalid operation",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ModelError {}

/// A set of half-open byte ranges `[start, end)`, kept sorted, disjoint and non-adjacent
/// (touching ranges are merged), so a long sequential write is a single range.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `[start, end)`; an empty range is ignored.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges starting at or before `end` whose end reaches `start` overlap or touch the new
        // one; walking them backwards, the first that ends before `start` ends the run.
        let touching: Vec<(u64, u64)> = self
            .map
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let (mut s, mut e) = (start, end);
        for (rs, re) in touching {
            self.map.remove(&rs);
            s = s.min(rs);
            e = e.max(re);
        }
        self.map.insert(s, e);
    }

    /// The ranges, cut at `limit` (bytes at or past it are dropped).
    pub fn clamped(&self, limit: u64) -> Vec<(u64, u64)> {
        self.map
            .iter()
            .filter(|&(&s, _)| s < limit)
            .map(|(&s, &e)| (s, e.min(limit)))
            .collect()
    }

    /// Whether no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many disjoint ranges the set holds.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// What an fsync of a file must copy into its durable shadow: set the shadow's length to `len`,
/// then copy every range of `ranges` from the live file. Apply it, then [`Model::commit_fsync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// The file.
    pub ino: Ino,
    /// Its current (live) length, which becomes its durable length.
    pub len: u64,
    /// Ranges changed since the last fsync, within `len`.
    pub ranges: Vec<(u64, u64)>,
}

/// One path of the [`DurableImage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageNode {
    /// A directory.
    Dir {
        /// Its inode.
        ino: Ino,
        /// Permission bits (mode changes are treated as durable at once).
        mode: u32,
    },
    /// A file holding the durable bytes of inode `ino`: its shadow, cut to `len` (a file never
    /// fsync'd has no shadow and `len` 0: it comes back empty).
    File {
        /// Its inode (the key of its shadow copy).
        ino: Ino,
        /// Its durable length.
        len: u64,
        /// Permission bits (mode changes are treated as durable at once).
        mode: u32,
    },
}

/// What survives a power cut: every durable path (relative to the root, parents before
/// children), and notes about durable entries that had to be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableImage {
    /// Paths in depth-first order; the root itself is not listed.
    pub entries: Vec<(PathBuf, ImageNode)>,
    /// Durable entries that could not be laid out: a directory reachable twice, or in a cycle
    /// (possible only after directory renames whose parents were fsync'd in some orders).
    pub skipped: Vec<String>,
}

impl DurableImage {
    /// The node at `path`, if it survives.
    pub fn get(&self, path: &str) -> Option<&ImageNode> {
        self.entries
            .iter()
            .find(|(p, _)| p.as_os_str() == OsStr::new(path))
            .map(|(_, n)| n)
    }

    /// The surviving paths, as strings.
    pub fn paths(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Inode {
    kind: Kind,
    mode: u32,
    /// Current parent and name; `None` once unlinked (and for the root).
    binding: Option<(Ino, OsString)>,
    /// How many durable directory entries point here.
    durable_refs: u32,
    /// Open file handles.
    open: u32,
    // directories
    entries: BTreeMap<OsString, Ino>,
    durable_entries: BTreeMap<OsString, Ino>,
    // files
    len: u64,
    durable_len: u64,
    dirty: RangeSet,
}

impl Inode {
    fn new(kind: Kind, mode: u32, binding: Option<(Ino, OsString)>) -> Inode {
        Inode {
            kind,
            mode,
            binding,
            durable_refs: 0,
            open: 0,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            len: 0,
            durable_len: 0,
            dirty: RangeSet::default(),
        }
    }
}

/// The live namespace plus what of it is durable. See the module doc.
#[derive(Debug, Clone)]
pub struct Model {
    inodes: HashMap<Ino, Inode>,
    next: Ino,
}

impl Model {
    /// A model holding only the root directory (durable, mode `root_mode`).
    pub fn new(root_mode: u32) -> Model {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(Kind::Dir, root_mode, None));
        Model {
            inodes,
            next: ROOT + 1,
        }
    }

    fn get(&self, ino: Ino) -> Result<&Inode, ModelError> {
        self.inodes.get(&ino).ok_or(ModelError::NotFound)
    }

    fn get_mut(&mut self, ino: Ino) -> Result<&mut Inode, ModelError> {
        self.inodes.get_mut(&ino).ok_or(ModelError::NotFound)
    }

    fn dir(&self, ino: Ino) -> Result<&Inode, ModelError> {
        let node = self.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(ModelError::NotDir);
        }
        Ok(node)
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Inode, ModelError> {
        let node = self.get_mut(ino)?;
        if node.kind != Kind::File {
            return Err(ModelError::IsDir);
        }
        Ok(node)
    }

    /// Registers an entry that already existed on disk before the model started: it is durable
    /// as it is (its binding, and for a file its `len` bytes, which the caller copies into the
    /// shadow). Parents must be registered first.
    pub fn add_existing(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        len: u64,
        mode: u32,
    ) -> Result<Ino, ModelError> {
        let ino = self.create(parent, name, kind, mode)?;
        let node = self.get_mut(ino)?;
        node.len = len;
        node.durable_len = len;
        node.durable_refs = 1;
        self.get_mut(parent)?
            .durable_entries
            .insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// The inode bound to `name` in directory `parent`, now.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.inodes.get(&parent)?.entries.get(name).copied()
    }

    /// Whether `ino` is a file or a directory.
    pub fn kind(&self, ino: Ino) -> Option<Kind> {
        self.inodes.get(&ino).map(|n| n.kind)
    }

    /// The current parent of `ino` (the root is its own parent); `None` once unlinked.
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        if ino == ROOT {
            return Some(ROOT);
        }
        self.inodes.get(&ino)?.binding.as_ref().map(|(p, _)| *p)
    }

    /// The current path of `ino` relative to the root (empty for the root); `None` once
    /// unlinked.
    pub fn path(&self, ino: Ino) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let (parent, name) = self.inodes.get(&cur)?.binding.as_ref()?;
            names.push(name.clone());
            cur = *parent;
            if names.len() > self.inodes.len() {
                return None; // a cycle: cannot happen while the model mirrors a real tree
            }
        }
        Some(names.iter().rev().collect())
    }

    /// The current entries of directory `ino`, sorted by name.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Ino, Kind)>, ModelError> {
        let dir = self.dir(ino)?;
        Ok(dir
            .entries
            .iter()
            .map(|(name, &child)| {
                let kind = self.kind(child).unwrap_or(Kind::File);
                (name.clone(), child, kind)
            })
            .collect())
    }

    /// The current length of file `ino`.
    pub fn len(&self, ino: Ino) -> Option<u64> {
        self.inodes.get(&ino).map(|n| n.len)
    }

    /// The length of file `ino` as of its last fsync.
    pub fn durable_len(&self, ino: Ino) -> Option<u64> {
        self.inodes.get(&ino).map(|n| n.durable_len)
    }

    /// Records a new file or directory `name` in `parent`. Nothing about it is durable yet: its
    /// entry becomes durable with the next fsync of `parent`, a file's bytes with its own fsync.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> Result<Ino, ModelError> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(ModelError::Exists);
        }
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(
            ino,
            Inode::new(kind, mode, Some((parent, name.to_os_string()))),
        );
        self.get_mut(parent)?
            .entries
            .insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Records `len` bytes written at `offset` into file `ino`.
    pub fn write(&mut self, ino: Ino, offset: u64, len: u64) -> Result<(), ModelError> {
        let node = self.file_mut(ino)?;
        let end = offset.saturating_add(len);
        node.dirty.insert(offset, end);
        if len > 0 {
            node.len = node.len.max(end);
        }
        Ok(())
    }

    /// Records a truncate (shrink or extend) of file `ino` to `len`. The bytes between the old
    /// and the new length count as written: they must be copied at the next fsync (as zeros
    /// after an extend, and to overwrite older durable bytes after a shrink and re-extend).
    pub fn truncate(&mut self, ino: Ino, len: u64) -> Result<(), ModelError> {
        let node = self.file_mut(ino)?;
        let (lo, hi) = (node.len.min(len), node.len.max(len));
        node.dirty.insert(lo, hi);
        node.len = len;
        Ok(())
    }

    /// Records a mode change; modes are not subject to the durability model.
    pub fn set_mode(&mut self, ino: Ino, mode: u32) -> Result<(), ModelError> {
        self.get_mut(ino)?.mode = mode;
        Ok(())
    }

    /// What an fsync or fdatasync of file `ino` must copy (no change to the model yet).
    pub fn fsync_plan(&self, ino: Ino) -> Result<SyncPlan, ModelError> {
        let node = self.get(ino)?;
        if node.kind != Kind::File {
            return Err(ModelError::IsDir);
        }
        Ok(SyncPlan {
            ino,
            len: node.len,
            ranges: node.dirty.clamped(node.len),
        })
    }

    /// Records that `plan` was applied: the file's bytes and length as of the plan are durable.
    /// Writes recorded since the plan was made stay dirty only if they were outside it, so make
    /// and apply the plan without letting writes in between.
    pub fn commit_fsync(&mut self, plan: &SyncPlan) -> Result<(), ModelError> {
        let node = self.file_mut(plan.ino)?;
        node.dirty.clear();
        node.durable_len = plan.len;
        Ok(())
    }

    /// Records an fsync of directory `ino`: its current entries become its durable entries.
    /// Returns the file inodes forgotten as a result (their shadows can be deleted).
    pub fn fsyncdir(&mut self, ino: Ino) -> Result<Vec<Ino>, ModelError> {
        let dir = self.dir(ino)?;
        let old: Vec<Ino> = dir.durable_entries.values().copied().collect();
        let new = dir.entries.clone();
        for child in new.values() {
            self.get_mut(*child)?.durable_refs += 1;
        }
        for child in &old {
            let node = self.get_mut(*child)?;
            node.durable_refs = node.durable_refs.saturating_sub(1);
        }
        self.get_mut(ino)?.durable_entries = new;
        let mut released = Vec::new();
        for child in old {
            self.collect(child, &mut released);
        }
        Ok(released)
    }

    /// Records an open file handle on `ino` (an unlinked file stays known while open).
    pub fn open(&mut self, ino: Ino) -> Result<(), ModelError> {
        self.get_mut(ino)?.open += 1;
        Ok(())
    }

    /// Records the release of a file handle; returns the file inodes forgotten as a result.
    pub fn release(&mut self, ino: Ino) -> Result<Vec<Ino>, ModelError> {
        let node = self.get_mut(ino)?;
        node.open = node.open.saturating_sub(1);
        let mut released = Vec::new();
        self.collect(ino, &mut released);
        Ok(released)
    }

    /// Records the removal of file `name` from `parent`; returns the file inodes forgotten.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<Vec<Ino>, ModelError> {
        let ino = self.lookup(parent, name).ok_or(ModelError::NotFound)?;
        if self.get(ino)?.kind != Kind::File {
            return Err(ModelError::IsDir);
        }
        self.unbind(parent, name, ino)
    }

    /// Records the removal of empty directory `name` from `parent`; returns the file inodes
    /// forgotten.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<Vec<Ino>, ModelError> {
        let ino = self.lookup(parent, name).ok_or(ModelError::NotFound)?;
        let dir = self.dir(ino)?;
        if !dir.entries.is_empty() {
            return Err(ModelError::NotEmpty);
        }
        self.unbind(parent, name, ino)
    }

    fn unbind(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<Vec<Ino>, ModelError> {
        self.get_mut(parent)?.entries.remove(name);
        self.get_mut(ino)?.binding = None;
        let mut released = Vec::new();
        self.collect(ino, &mut released);
        Ok(released)
    }

    /// Records `rename(parent/name, new_parent/new_name)`, replacing what `new_name` was bound
    /// to. Returns the file inodes forgotten.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
    ) -> Result<Vec<Ino>, ModelError> {
        let ino = self.lookup(parent, name).ok_or(ModelError::NotFound)?;
        self.dir(new_parent)?;
        if ino == ROOT {
            return Err(ModelError::Invalid);
        }
        let replaced = self.lookup(new_parent, new_name);
        if replaced == Some(ino) {
            return Ok(Vec::new()); // same entry: rename(2) does nothing
        }
        if let Some(old) = replaced {
            let (old_kind, new_kind) = (self.get(old)?.kind, self.get(ino)?.kind);
            match (new_kind, old_kind) {
                (Kind::File, Kind::Dir) => return Err(ModelError::IsDir),
                (Kind::Dir, Kind::File) => return Err(ModelError::NotDir),
                (Kind::Dir, Kind::Dir) if !self.get(old)?.entries.is_empty() => {
                    return Err(ModelError::NotEmpty);
                }
                _ => {}
            }
        }
        // A directory cannot move below itself.
        if self.get(ino)?.kind == Kind::Dir {
            let mut cur = new_parent;
            while cur != ROOT {
                if cur == ino {
                    return Err(ModelError::Invalid);
                }
                cur = self.parent(cur).ok_or(ModelError::NotFound)?;
            }
        }
        self.get_mut(parent)?.entries.remove(name);
        self.get_mut(new_parent)?
            .entries
            .insert(new_name.to_os_string(), ino);
        self.get_mut(ino)?.binding = Some((new_parent, new_name.to_os_string()));
        let mut released = Vec::new();
        if let Some(old) = replaced {
            self.get_mut(old)?.binding = None;
            self.collect(old, &mut released);
        }
        Ok(released)
    }

    /// Forgets `ino` if nothing can reach it any more: no current name, no durable entry, no
    /// open handle. A forgotten directory drops its durable entries, which may free more.
    fn collect(&mut self, ino: Ino, released: &mut Vec<Ino>) {
        let mut todo = vec![ino];
        while let Some(ino) = todo.pop() {
            let Some(node) = self.inodes.get(&ino) else {
                continue;
            };
            if ino == ROOT || node.binding.is_some() || node.durable_refs > 0 || node.open > 0 {
                continue;
            }
            let Some(node) = self.inodes.remove(&ino) else {
                continue;
            };
            match node.kind {
                Kind::File => released.push(ino),
                Kind::Dir => {
                    for child in node.durable_entries.values() {
                        if let Some(c) = self.inodes.get_mut(child) {
                            c.durable_refs = c.durable_refs.saturating_sub(1);
                            todo.push(*child);
                        }
                    }
                }
            }
        }
    }

    /// How many inodes the model currently tracks (the root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// What survives a power cut now. See [`DurableImage`].
    pub fn durable_image(&self) -> DurableImage {
        let mut image = DurableImage::default();
        let mut emitted: HashSet<Ino> = HashSet::from([ROOT]);
        // (dir, its path, its ancestors)
        let mut stack: Vec<(Ino, PathBuf, Vec<Ino>)> = vec![(ROOT, PathBuf::new(), vec![])];
        while let Some((dir, path, ancestors)) = stack.pop() {
            let Some(node) = self.inodes.get(&dir) else {
                continue;
            };
            let mut subdirs = Vec::new();
            for (name, &child) in &node.durable_entries {
                let child_path = path.join(name);
                let Some(c) = self.inodes.get(&child) else {
                    image
                        .skipped
                        .push(format!("{}: unknown inode {child}", child_path.display()));
                    continue;
                };
                match c.kind {
                    Kind::File => image.entries.push((
                        child_path,
                        ImageNode::File {
                            ino: child,
                            len: c.durable_len,
                            mode: c.mode,
                        },
                    )),
                    Kind::Dir => {
                        if ancestors.contains(&child) || child == dir {
                            image.skipped.push(format!(
                                "{}: directory cycle (inode {child})",
                                child_path.display()
                            ));
                        } else if !emitted.insert(child) {
                            image.skipped.push(format!(
                                "{}: directory inode {child} is reachable twice",
                                child_path.display()
                            ));
                        } else {
                            image.entries.push((
                                child_path.clone(),
                                ImageNode::Dir {
                                    ino: child,
                                    mode: c.mode,
                                },
                            ));
                            subdirs.push((child, child_path));
                        }
                    }
                }
            }
            // reversed so that the walk visits directories in name order
            for (child, child_path) in subdirs.into_iter().rev() {
                let mut anc = ancestors.clone();
                anc.push(dir);
                stack.push((child, child_path, anc));
            }
        }
        image
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests;
