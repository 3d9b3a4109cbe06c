//! Test tools for Wharf's crash tests. The main one is **wharf-lazyfs**, a FUSE pass-through
//! file system in the spirit of LazyFS (the C++ tool Jepsen uses): it serves a backing directory
//! at a mount point, and on a *power cut* rewrites the backing directory so that it holds only
//! what had been made durable with fsync — every write that was not fsync'd is lost, the way a
//! machine losing power loses its page cache.
//!
//! Start reading at [`lazyfs::mount`] (the library API the tests and the binary use), then
//! [`model::Model`] (the pure durability model, unit-tested without FUSE). The binary
//! `wharf-lazyfs <backing-dir> <mountpoint>` wraps the same code: `kill -USR1 <pid>` cuts the
//! power, `kill -TERM <pid>` unmounts cleanly (see `src/bin/wharf-lazyfs.rs`).
//!
//! # The durability model
//!
//! ```text
//!   application ── write/rename/... ──▶ FUSE ──▶ backing dir (the live state, as usual)
//!                                        │
//!                                        └──▶ Model: per inode, what is durable
//!
//!   file data          write(off,len) ──▶ dirty ranges of the inode
//!                      truncate(len)  ──▶ [old len, new len) dirty as well
//!                      fsync/fdatasync ─▶ copy dirty ranges live ─▶ shadow/<ino>,
//!                                         shadow length := live length, dirty := ∅
//!
//!   directory entries  create/mkdir/rename/unlink/rmdir change the dir's *current* entries
//!                      fsync(dir)     ──▶ durable entries := current entries
//!
//!   power cut          stop serving (every further request fails with EIO), unmount, then
//!                      rebuild the backing dir from the root's *durable* entries, recursively:
//!
//!                      name ─(durable entry)─▶ dir inode  ─▶ mkdir, recurse into its durable entries
//!                      name ─(durable entry)─▶ file inode ─▶ its shadow (its bytes as of its last
//!                                                            fsync; empty if never fsync'd)
//! ```
//!
//! So: a file's data is durable after `fsync(file)`; a `name → file` binding after
//! `fsync(parent dir)`. A new file whose entry is durable but whose data was never fsync'd comes
//! back empty (truncated to its synced length); a file fsync'd but whose entry was not made
//! durable disappears; an unlink or rename not followed by an fsync of the directory is undone.
//! Bytes and lengths are tracked per inode, so a file fsync'd under a temporary name and then
//! renamed keeps its data.
//!
//! Not modelled (kept simple on purpose):
//! - No torn or reordered writes inside a file: the data of one inode is all-or-nothing per fsync
//!   interval (a real disk may keep *some* unsynced pages; this model keeps none).
//! - Metadata other than names and lengths (mode, owner, times) is taken as durable at once.
//! - Directory operations are per directory: a rename across directories whose source and target
//!   directories were fsync'd at different times can leave the file under both names, or none (a
//!   journaling file system keeps exactly one). A directory reachable twice or in a cycle in the
//!   durable image is laid out once ([`model::DurableImage::skipped`] says what was left out).
//! - fsync of a file does not make its directory entry durable (ext4 and XFS often do in
//!   practice; POSIX does not promise it), nor does it make anything else durable.
//! - No hard links, symlinks, special files, xattrs, `fallocate`, `copy_file_range` or shared
//!   writable `mmap` (the kernel's FUSE write-through mode sends every `write(2)` here at once;
//!   redb 4 uses `pread`/`pwrite`/`fdatasync`/`ftruncate` and byte-range locks, which the kernel
//!   handles locally, and no `mmap`).
//!
//! Memory and disk: the model keeps a few words per inode and a merged range set per file; the
//! shadow copies (one file per inode that was ever fsync'd, in a separate temporary directory) are
//! deleted when the inode can no longer come back (no name, no durable entry, no open handle).
//!
//! # Other tools
//!
//! - [`netlab::NetLab`]: real network namespaces on a bridge, one per node, so that
//!   multi-process tests (`tests/`) can cut a `wharf serve` process off from the others.
//! - [`cluster`]: an in-process cluster behind a fault-injecting network layer.
//! - [`ports`]: free loopback ports for test servers.

pub mod cluster;
pub mod lazyfs;
pub mod model;
pub mod netlab;
pub mod ports;
