//! FUSE smoke tests: a real mount (needs `/dev/fuse` and root, or `fusermount3`), driven with
//! plain `std::fs` calls, then a power cut, then the backing directory is checked.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// Fails loudly (never skips) when FUSE is not usable here.
fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (modprobe fuse; in a container, pass the device)"
    );
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("fusermount3").is_file())
    });
    assert!(
        on_path,
        "required tool `fusermount3` is not installed.\nInstall it with: apt-get install -y \
         --no-install-recommends fuse3\nor install every test tool at once with: \
         scripts/install-test-tools"
    );
}

fn is_mounted(mountpoint: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mountpoint.to_str().unwrap();
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(want))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn power_cut_keeps_exactly_what_was_fsynced() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(backing.join("preexisting"), b"was here before").unwrap();

    let mounted = mount(&backing, &mnt, Options::default()).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    assert!(is_mounted(&mnt), "not mounted at {}", mnt.display());

    // existing content is served
    assert_eq!(
        fs::read(mnt.join("preexisting")).unwrap(),
        b"was here before"
    );

    // d/ made durable in the root
    fs::create_dir(mnt.join("d")).unwrap();
    fsync_dir(&mnt);

    // a large sequential write, fsync'd, then more that is not
    let big = pattern(3 * 1024 * 1024 + 5, 1);
    {
        let mut f = File::create(mnt.join("d/big")).unwrap();
        for chunk in big.chunks(100_000) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        f.write_all(b"unsynced tail").unwrap();
        f.write_all_at(b"XXXX", 10).unwrap();
    }
    assert_eq!(
        fs::metadata(mnt.join("d/big")).unwrap().len(),
        big.len() as u64 + 13
    );
    let read_back = fs::read(mnt.join("d/big")).unwrap();
    assert_eq!(&read_back[..10], &big[..10]);
    assert_eq!(&read_back[10..14], b"XXXX");

    // a file whose entry will be durable but whose data never is
    fs::write(mnt.join("d/nodata"), b"lost").unwrap();

    // fdatasync'd under a temporary name, entry durable, then renamed without a dir fsync
    {
        let f = File::create(mnt.join("d/tmp")).unwrap();
        f.write_all_at(b"renamed content", 0).unwrap();
        f.sync_data().unwrap();
    }
    fsync_dir(&mnt.join("d"));
    fs::rename(mnt.join("d/tmp"), mnt.join("d/renamed")).unwrap();

    // truncate through ftruncate, synced
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(mnt.join("trunc"))
            .unwrap();
        f.write_all_at(&pattern(10_000, 2), 0).unwrap();
        f.set_len(100).unwrap();
        f.set_len(200).unwrap();
        f.sync_all().unwrap();
    }
    fsync_dir(&mnt);

    // undone: an unlink and a mkdir without the root's fsync
    fs::remove_file(mnt.join("preexisting")).unwrap();
    fs::create_dir(mnt.join("new-dir")).unwrap();
    fs::write(mnt.join("new-dir/f"), b"x").unwrap();

    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["d", "new-dir", "trunc"]);

    let report = mounted.power_cut().unwrap();
    eprintln!("{report}");
    assert!(!report.lazy_unmount);
    assert!(report.stats.fsyncs >= 3, "{report:?}");
    assert!(!is_mounted(&mnt), "still mounted after the power cut");

    let backing = backing.canonicalize().unwrap();
    let mut all: Vec<String> = Vec::new();
    let mut stack = vec![backing.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            all.push(p.strip_prefix(&backing).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    all.sort();
    assert_eq!(
        all,
        ["d", "d/big", "d/nodata", "d/tmp", "preexisting", "trunc"]
    );
    assert_eq!(fs::read(backing.join("d/big")).unwrap(), big);
    assert_eq!(fs::read(backing.join("d/nodata")).unwrap(), b"");
    assert_eq!(fs::read(backing.join("d/tmp")).unwrap(), b"renamed content");
    assert_eq!(
        fs::read(backing.join("preexisting")).unwrap(),
        b"was here before"
    );
    let mut want = pattern(100, 2);
    want.resize(200, 0);
    assert_eq!(fs::read(backing.join("trunc")).unwrap(), want);
}

#[test]
fn dropping_the_mount_unmounts_and_keeps_everything() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mounted = mount(&backing, &mnt, Options::default()).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    fs::write(mnt.join("never-synced"), b"still here").unwrap();
    let image = mounted.durable_image();
    assert!(
        image.entries.is_empty(),
        "nothing is durable yet: {image:?}"
    );
    drop(mounted);
    assert!(!is_mounted(&mnt));
    assert_eq!(
        fs::read(backing.join("never-synced")).unwrap(),
        b"still here"
    );
}

#[test]
fn refuses_a_mount_point_inside_the_backing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("inner");
    fs::create_dir(&inner).unwrap();
    let err = mount(tmp.path(), &inner, Options::default()).unwrap_err();
    assert!(err.to_string().contains("must not contain"), "{err}");
}

#[test]
fn power_cut_with_a_file_still_open_detaches_lazily_and_fails_its_io() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mounted = mount(&backing, &mnt, Options::default()).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    let mut open = File::create(mnt.join("held-open")).unwrap();
    open.write_all(b"synced").unwrap();
    open.sync_all().unwrap();
    fsync_dir(&mnt);
    open.write_all(b" and not").unwrap();

    let report = mounted.power_cut().unwrap();
    assert!(report.lazy_unmount, "{report:?}");
    assert!(!is_mounted(&mnt));
    let err = open.write_all(b"after the cut").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(open);
    assert_eq!(
        fs::read(backing.join("held-open")).unwrap(),
        b"synced",
        "the backing dir holds the durable image"
    );
}
