//! The FUSE side of wharf-lazyfs: a pass-through of a backing directory that reports every
//! operation to the [`Model`], keeps shadow copies of fsync'd file data, and on
//! [`Mounted::power_cut`] rewrites the backing directory to the durable image.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::path::Path;
//! let mounted = wharf_testkit::lazyfs::mount(Path::new("backing"), Path::new("mnt"), Default::default())?;
//! // ... run the program under test on "mnt", kill it ...
//! let report = mounted.power_cut()?; // "backing" now holds only what was fsync'd
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! All requests are served by one thread under one lock, so an operation and its bookkeeping are
//! atomic with respect to the power cut: the cut happens between two operations.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use nix::libc;

use crate::model::{DurableImage, ImageNode, Ino, Kind, Model, ModelError, ROOT, SyncPlan};

/// How long the kernel may cache attributes and names. Every change goes through this file
/// system, so caching cannot go stale.
const TTL: Duration = Duration::from_secs(1);

/// Copy buffer for fsync and import.
const COPY_CHUNK: u64 = 1 << 20;

/// Mount options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to keep the durable copies of file data. Must be empty and outside the backing
    /// directory and the mount point. Default: a new temporary directory, removed on drop.
    pub shadow_dir: Option<PathBuf>,
}

/// Counters of what the file system served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `write` requests.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// fsync and fdatasync requests on files.
    pub fsyncs: u64,
    /// fsync requests on directories.
    pub fsyncdirs: u64,
    /// Bytes copied into shadows by fsyncs.
    pub bytes_synced: u64,
    /// Requests refused because the power was cut.
    pub after_cut: u64,
}

/// What a power cut left in the backing directory.
#[derive(Debug, Clone, Default)]
pub struct CutReport {
    /// Counters up to the cut.
    pub stats: Stats,
    /// Files in the rebuilt backing directory.
    pub files: usize,
    /// Directories in it (the root not counted).
    pub dirs: usize,
    /// Bytes in its files.
    pub bytes: u64,
    /// Durable entries that could not be laid out (see [`DurableImage::skipped`]).
    pub skipped: Vec<String>,
    /// Whether the mount was busy and had to be detached lazily.
    pub lazy_unmount: bool,
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "power cut: kept {} files ({} bytes) in {} dirs; served {} writes ({} bytes), {} fsyncs \
             ({} bytes made durable), {} directory fsyncs",
            self.files,
            self.bytes,
            self.dirs,
            s.writes,
            s.bytes_written,
            s.fsyncs,
            s.bytes_synced,
            s.fsyncdirs
        )?;
        if self.lazy_unmount {
            write!(f, "; the mount was busy and was detached lazily")?;
        }
        if !self.skipped.is_empty() {
            write!(f, "; left out: {}", self.skipped.join(", "))?;
        }
        Ok(())
    }
}

/// A mounted wharf-lazyfs. Dropping it unmounts cleanly (no power cut: the backing directory
/// keeps everything).
pub struct Mounted {
    session: Option<BackgroundSession>,
    shared: Shared,
    mountpoint: PathBuf,
    backing: PathBuf,
    shadow: PathBuf,
    _shadow_tmp: Option<tempfile::TempDir>,
}

impl fmt::Debug for Mounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mounted")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("shadow", &self.shadow)
            .finish()
    }
}

/// Mounts a pass-through of `backing` at `mountpoint` (both existing directories, neither inside
/// the other). What `backing` holds already counts as durable. Needs `/dev/fuse` and root (or
/// the `fusermount3` helper, Debian package `fuse3`).
pub fn mount(backing: &Path, mountpoint: &Path, options: Options) -> io::Result<Mounted> {
    let backing = backing.canonicalize()?;
    let mountpoint = mountpoint.canonicalize()?;
    for (what, dir) in [("backing dir", &backing), ("mount point", &mountpoint)] {
        if !fs::metadata(dir)?.is_dir() {
            return Err(invalid(format!(
                "{what} {} is not a directory",
                dir.display()
            )));
        }
    }
    if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
        return Err(invalid(format!(
            "backing dir {} and mount point {} must not contain each other",
            backing.display(),
            mountpoint.display()
        )));
    }
    let (shadow, shadow_tmp) = match options.shadow_dir {
        Some(dir) => {
            fs::create_dir_all(&dir)?;
            let dir = dir.canonicalize()?;
            if fs::read_dir(&dir)?.next().is_some() {
                return Err(invalid(format!(
                    "shadow dir {} is not empty",
                    dir.display()
                )));
            }
            (dir, None)
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("wharf-lazyfs-shadow-")
                .tempdir()?;
            (tmp.path().canonicalize()?, Some(tmp))
        }
    };
    for other in [&backing, &mountpoint] {
        if shadow.starts_with(other) || other.starts_with(&shadow) {
            return Err(invalid(format!(
                "shadow dir {} must be outside {}",
                shadow.display(),
                other.display()
            )));
        }
    }

    let mut model = Model::new(fs::metadata(&backing)?.mode() & 0o7777);
    import(&backing, ROOT, &mut model, &shadow)?;
    let shared = Shared(Arc::new(Mutex::new(State {
        backing: backing.clone(),
        shadow: shadow.clone(),
        model,
        handles: HashMap::new(),
        next_fh: 1,
        cut: false,
        stats: Stats::default(),
    })));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("wharf-lazyfs".to_string()),
        MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount(
        LazyFs {
            shared: shared.clone(),
        },
        &mountpoint,
        &config,
    )?;
    Ok(Mounted {
        session: Some(session),
        shared,
        mountpoint,
        backing,
        shadow,
        _shadow_tmp: shadow_tmp,
    })
}

impl Mounted {
    /// Where the file system is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (canonical path).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// What a power cut now would leave (for tests and debugging).
    pub fn durable_image(&self) -> DurableImage {
        self.shared.lock().model.durable_image()
    }

    /// Cuts the power: from now on every request fails with EIO; then unmounts (lazily if the
    /// mount is busy: kill the programs using it first for a clean unmount) and rewrites the
    /// backing directory so it holds only the durable image. See the crate doc for the model.
    pub fn power_cut(mut self) -> io::Result<CutReport> {
        let (image, stats) = {
            let mut st = self.shared.lock();
            st.cut = true;
            st.handles.clear(); // closes the backing files
            (st.model.durable_image(), st.stats)
        };
        let lazy_unmount = self.unmount_inner();
        let (files, dirs, bytes) = rebuild(&self.backing, &self.shadow, &image)?;
        Ok(CutReport {
            stats,
            files,
            dirs,
            bytes,
            skipped: image.skipped,
            lazy_unmount,
        })
    }

    /// Unmounts without a power cut: the backing directory keeps everything written.
    pub fn unmount(mut self) {
        self.unmount_inner();
    }

    /// Returns whether the mount had to be detached lazily.
    fn unmount_inner(&mut self) -> bool {
        let Some(session) = self.session.take() else {
            return false;
        };
        match session.umount_and_join() {
            Ok(()) => false,
            Err(_) => {
                // Busy (files still open) or already gone: detach it; the serving thread then
                // answers the remaining requests (with EIO after a cut) until the last user
                // closes, or this process exits.
                lazy_unmount(&self.mountpoint);
                true
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount_inner();
    }
}

/// Detaches the mount at `mountpoint` (umount2 MNT_DETACH, else `fusermount3 -u -z`).
pub fn lazy_unmount(mountpoint: &Path) {
    if nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return;
    }
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-q")
        .arg("-z")
        .arg("--")
        .arg(mountpoint)
        .status();
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Registers what `dir` holds as durable and copies file contents into the shadow.
fn import(dir: &Path, ino: Ino, model: &mut Model, shadow: &Path) -> io::Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let md = fs::symlink_metadata(entry.path())?;
        let name = entry.file_name();
        let mode = md.mode() & 0o7777;
        if md.is_dir() {
            let child = model
                .add_existing(ino, &name, Kind::Dir, 0, mode)
                .map_err(model_io)?;
            import(&entry.path(), child, model, shadow)?;
        } else if md.is_file() {
            let child = model
                .add_existing(ino, &name, Kind::File, md.len(), mode)
                .map_err(model_io)?;
            fs::copy(entry.path(), shadow.join(child.to_string()))?;
        } else {
            return Err(invalid(format!(
                "{}: only regular files and directories are supported",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

fn model_io(e: ModelError) -> io::Error {
    io::Error::other(format!("model: {e}"))
}

/// Empties `backing` and lays out `image` in it from the shadows. Returns (files, dirs, bytes).
fn rebuild(backing: &Path, shadow: &Path, image: &DurableImage) -> io::Result<(usize, usize, u64)> {
    for entry in fs::read_dir(backing)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    let (mut files, mut dirs, mut bytes) = (0, 0, 0);
    for (rel, node) in &image.entries {
        let path = backing.join(rel);
        match *node {
            ImageNode::Dir { mode, .. } => {
                fs::create_dir(&path)?;
                fs::set_permissions(&path, Permissions::from_mode(mode))?;
                dirs += 1;
            }
            ImageNode::File { ino, len, mode } => {
                if len > 0 {
                    fs::copy(shadow.join(ino.to_string()), &path)?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                file.set_len(len)?;
                file.set_permissions(Permissions::from_mode(mode))?;
                files += 1;
                bytes += len;
            }
        }
    }
    Ok((files, dirs, bytes))
}

/// Copies the ranges of `plan` from `live` into the shadow of its inode. Returns bytes copied.
fn apply_sync(shadow_dir: &Path, plan: &SyncPlan, live: &File) -> io::Result<u64> {
    let shadow = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(shadow_dir.join(plan.ino.to_string()))?;
    shadow.set_len(plan.len)?;
    let total: u64 = plan.ranges.iter().map(|(s, e)| e - s).sum();
    let mut buf = vec![0u8; total.min(COPY_CHUNK) as usize];
    for &(start, end) in &plan.ranges {
        let mut off = start;
        while off < end {
            let n = (end - off).min(COPY_CHUNK) as usize;
            live.read_exact_at(&mut buf[..n], off)?;
            shadow.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
    }
    Ok(total)
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the panic left it;
        // serving on beats wedging every later request.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Handle {
    ino: Ino,
    file: File,
    writable: bool,
}

struct State {
    backing: PathBuf,
    shadow: PathBuf,
    model: Model,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    cut: bool,
    stats: Stats,
}

type R<T> = Result<T, Errno>;

fn errno(e: ModelError) -> Errno {
    match e {
        ModelError::NotFound => Errno::ENOENT,
        ModelError::NotDir => Errno::ENOTDIR,
        ModelError::IsDir => Errno::EISDIR,
        ModelError::Exists => Errno::EEXIST,
        ModelError::NotEmpty => Errno::ENOTEMPTY,
        ModelError::Invalid => Errno::EINVAL,
    }
}

/// A file to act on: an open handle, or one opened for the purpose.
enum FileRef<'a> {
    Handle(&'a File),
    Owned(File),
}

impl Deref for FileRef<'_> {
    type Target = File;
    fn deref(&self) -> &File {
        match self {
            FileRef::Handle(f) => f,
            FileRef::Owned(f) => f,
        }
    }
}

fn to_time(secs: i64, nsec: i64) -> SystemTime {
    match (u64::try_from(secs), u32::try_from(nsec)) {
        (Ok(s), Ok(n)) => UNIX_EPOCH + Duration::new(s, n),
        _ => UNIX_EPOCH,
    }
}

fn attr(ino: Ino, md: &fs::Metadata) -> FileAttr {
    let kind = if md.is_dir() {
        FileType::Directory
    } else {
        FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: to_time(md.atime(), md.atime_nsec()),
        mtime: to_time(md.mtime(), md.mtime_nsec()),
        ctime: to_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: u32::try_from(md.rdev()).unwrap_or(0),
        blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn open_backing(path: &Path, write: bool) -> io::Result<(File, bool)> {
    // Handles are opened read-write when possible, so that an fsync through any handle can read
    // the data it must copy, and a truncate through any handle works.
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let f = OpenOptions::new().read(true).write(write).open(path)?;
            Ok((f, write))
        }
        Err(e) => Err(e),
    }
}

impl State {
    fn live(&mut self) -> R<()> {
        if self.cut {
            self.stats.after_cut += 1;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn path_of(&self, ino: Ino) -> R<PathBuf> {
        self.model
            .path(ino)
            .map(|p| self.backing.join(p))
            .ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: Ino, name: &OsStr) -> R<PathBuf> {
        if self.model.kind(parent) != Some(Kind::Dir) {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.path_of(parent)?.join(name))
    }

    /// A file for `ino`: handle `fh` if it is one of `ino`'s, else any handle of `ino`, else the
    /// file opened by its path. `write`: the file must be writable.
    fn file_for(&self, ino: Ino, fh: Option<u64>, write: bool) -> R<FileRef<'_>> {
        let usable = |h: &&Handle| h.ino == ino && (h.writable || !write);
        if let Some(h) = fh.and_then(|fh| self.handles.get(&fh)).filter(usable) {
            return Ok(FileRef::Handle(&h.file));
        }
        if let Some(h) = self.handles.values().find(usable) {
            return Ok(FileRef::Handle(&h.file));
        }
        let path = self.path_of(ino)?;
        let file = if self.model.kind(ino) == Some(Kind::Dir) {
            File::open(path)?
        } else {
            open_backing(&path, write)?.0
        };
        Ok(FileRef::Owned(file))
    }

    fn metadata(&self, ino: Ino, fh: Option<u64>) -> R<fs::Metadata> {
        if let Some(h) = fh.and_then(|fh| self.handles.get(&fh))
            && h.ino == ino
        {
            return Ok(h.file.metadata()?);
        }
        if let Some(p) = self.model.path(ino) {
            return Ok(fs::symlink_metadata(self.backing.join(p))?);
        }
        match self.handles.values().find(|h| h.ino == ino) {
            Some(h) => Ok(h.file.metadata()?),
            None => Err(Errno::ENOENT),
        }
    }

    fn getattr(&mut self, ino: Ino, fh: Option<u64>) -> R<FileAttr> {
        self.live()?;
        Ok(attr(ino, &self.metadata(ino, fh)?))
    }

    fn lookup(&mut self, parent: Ino, name: &OsStr) -> R<FileAttr> {
        self.live()?;
        let ino = self.model.lookup(parent, name).ok_or(Errno::ENOENT)?;
        self.getattr(ino, None)
    }

    fn forget_shadows(&self, inos: Vec<Ino>) {
        for ino in inos {
            let _ = fs::remove_file(self.shadow.join(ino.to_string()));
        }
    }

    fn add_handle(&mut self, ino: Ino, file: File, writable: bool) -> R<u64> {
        self.model.open(ino).map_err(errno)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                file,
                writable,
            },
        );
        Ok(fh)
    }

    fn open(&mut self, ino: Ino, flags: i32) -> R<u64> {
        self.live()?;
        match self.model.kind(ino) {
            Some(Kind::File) => {}
            Some(Kind::Dir) => return Err(Errno::EISDIR),
            None => return Err(Errno::ENOENT),
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (file, writable) = open_backing(&self.path_of(ino)?, write)?;
        if flags & libc::O_TRUNC != 0 && write {
            file.set_len(0)?;
            self.model.truncate(ino, 0).map_err(errno)?;
        }
        self.add_handle(ino, file, writable)
    }

    fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> R<(FileAttr, u64)> {
        self.live()?;
        if let Some(ino) = self.model.lookup(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            let fh = self.open(ino, flags)?;
            return Ok((self.getattr(ino, Some(fh))?, fh));
        }
        let path = self.child_path(parent, name)?;
        let perm = mode & !umask & 0o7777;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(perm)
            .open(&path)?;
        file.set_permissions(Permissions::from_mode(perm))?; // our own umask masked it
        let md = file.metadata()?;
        let ino = self
            .model
            .create(parent, name, Kind::File, perm)
            .map_err(errno)?;
        let fh = self.add_handle(ino, file, true)?;
        Ok((attr(ino, &md), fh))
    }

    fn mkdir(&mut self, parent: Ino, name: &OsStr, mode: u32, umask: u32) -> R<FileAttr> {
        self.live()?;
        let path = self.child_path(parent, name)?;
        let perm = mode & !umask & 0o7777;
        fs::DirBuilder::new().mode(perm).create(&path)?;
        fs::set_permissions(&path, Permissions::from_mode(perm))?;
        let ino = self
            .model
            .create(parent, name, Kind::Dir, perm)
            .map_err(errno)?;
        self.getattr(ino, None)
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> R<Vec<u8>> {
        self.live()?;
        let h = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match h.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> R<u32> {
        self.live()?;
        let h = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let ino = h.ino;
        // Recorded before writing: if the write fails halfway, whatever reached the file is
        // still copied at the next fsync (copying unchanged bytes is harmless).
        let result = h.file.write_all_at(data, offset);
        self.model
            .write(ino, offset, data.len() as u64)
            .map_err(errno)?;
        result?;
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    fn release(&mut self, fh: u64) {
        // Also after a cut: the kernel releases what it had open.
        if let Some(h) = self.handles.remove(&fh)
            && let Ok(gone) = self.model.release(h.ino)
        {
            self.forget_shadows(gone);
        }
    }

    fn fsync(&mut self, ino: Ino, fh: u64) -> R<()> {
        self.live()?;
        let plan = self.model.fsync_plan(ino).map_err(errno)?;
        let copied = {
            let file = self.file_for(ino, Some(fh), false)?;
            apply_sync(&self.shadow, &plan, &file)?
        };
        self.model.commit_fsync(&plan).map_err(errno)?;
        self.stats.fsyncs += 1;
        self.stats.bytes_synced += copied;
        Ok(())
    }

    fn fsyncdir(&mut self, ino: Ino) -> R<()> {
        self.live()?;
        let gone = self.model.fsyncdir(ino).map_err(errno)?;
        self.forget_shadows(gone);
        self.stats.fsyncdirs += 1;
        Ok(())
    }

    fn unlink(&mut self, parent: Ino, name: &OsStr) -> R<()> {
        self.live()?;
        fs::remove_file(self.child_path(parent, name)?)?;
        let gone = self.model.unlink(parent, name).map_err(errno)?;
        self.forget_shadows(gone);
        Ok(())
    }

    fn rmdir(&mut self, parent: Ino, name: &OsStr) -> R<()> {
        self.live()?;
        fs::remove_dir(self.child_path(parent, name)?)?;
        let gone = self.model.rmdir(parent, name).map_err(errno)?;
        self.forget_shadows(gone);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> R<()> {
        self.live()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE)
            && self.model.lookup(new_parent, new_name).is_some()
        {
            return Err(Errno::EEXIST); // one thread serves all requests: no race
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        fs::rename(from, to)?;
        let gone = self
            .model
            .rename(parent, name, new_parent, new_name)
            .map_err(errno)?;
        self.forget_shadows(gone);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> R<FileAttr> {
        self.live()?;
        if let Some(size) = size {
            if self.model.kind(ino) != Some(Kind::File) {
                return Err(Errno::EISDIR);
            }
            self.file_for(ino, fh, true)?.set_len(size)?;
            self.model.truncate(ino, size).map_err(errno)?;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            let file = self.file_for(ino, fh, false)?;
            if let Some(mode) = mode {
                file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::fchown(&*file, uid, gid)?;
            }
            let when = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(when(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(when(t));
            }
            if atime.is_some() || mtime.is_some() {
                file.set_times(times)?;
            }
            drop(file);
            if let Some(mode) = mode {
                self.model.set_mode(ino, mode & 0o7777).map_err(errno)?;
            }
        }
        self.getattr(ino, fh)
    }

    fn readdir(&mut self, ino: Ino, offset: u64, reply: &mut ReplyDirectory) -> R<()> {
        self.live()?;
        let parent = self.model.parent(ino).unwrap_or(ino);
        let mut all = vec![
            (OsStr::new(".").to_os_string(), ino, Kind::Dir),
            (OsStr::new("..").to_os_string(), parent, Kind::Dir),
        ];
        all.extend(self.model.entries(ino).map_err(errno)?);
        for (i, (name, child, kind)) in all.iter().enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(*child), i as u64 + 1, kind, name) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&mut self) -> R<nix::sys::statvfs::Statvfs> {
        self.live()?;
        nix::sys::statvfs::statvfs(&self.backing).map_err(|e| Errno::from_i32(e as i32))
    }
}

/// Answers statfs with the backing file system's numbers (free space matters: Wharf refuses
/// uploads below `storage.min_free`).
#[allow(clippy::useless_conversion)] // the statvfs field types differ between platforms
fn reply_statfs(st: &nix::sys::statvfs::Statvfs, reply: ReplyStatfs) {
    let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    reply.statfs(
        u64::from(st.blocks()),
        u64::from(st.blocks_free()),
        u64::from(st.blocks_available()),
        u64::from(st.files()),
        u64::from(st.files_free()),
        small(u64::from(st.block_size())),
        small(u64::from(st.name_max())),
        small(u64::from(st.fragment_size())),
    );
}

/// The [`Filesystem`] handed to fuser: every request locks the state and calls into it.
struct LazyFs {
    shared: Shared,
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.shared.lock().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.shared.lock().getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result =
            self.shared
                .lock()
                .setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0));
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.shared.lock().mkdir(parent.0, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.shared.lock().unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.shared.lock().rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .shared
            .lock()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.lock().open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.shared.lock().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.shared.lock().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync: nothing becomes durable here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.lock().fsync(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.shared.lock();
        match (st.live(), st.model.kind(ino.0)) {
            (Err(e), _) => reply.error(e),
            (Ok(()), Some(Kind::Dir)) => reply.opened(FileHandle(0), FopenFlags::empty()),
            (Ok(()), Some(Kind::File)) => reply.error(Errno::ENOTDIR),
            (Ok(()), None) => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.shared.lock().readdir(ino.0, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.lock().fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.shared.lock().statfs() {
            Ok(st) => reply_statfs(&st, reply),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks permissions itself.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .shared
            .lock()
            .create(parent.0, name, mode, umask, flags)
        {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests;
