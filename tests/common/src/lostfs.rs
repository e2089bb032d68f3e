//! LostFs: a FUSE filesystem that keeps what was written but not yet synced apart from what is
//! durable, and forgets it on a simulated power cut (the idea of Jepsen's LazyFS).
//!
//! One flat directory of regular files, in memory. Each file has two images: what reads see
//! now, and what `fsync` last made durable. The directory has two too: its names now, and the
//! names as of its last `fsync` (POSIX: a new or renamed name is durable only once its
//! directory is synced). [`LostFs::power_cut`] stops the "disk" at an instant (every operation
//! after it fails with `EIO`, as on a dead machine, so nothing is acknowledged on data written
//! after it); [`LostFs::power_on`] brings back only the durable images, optionally with a torn
//! part of what had not been synced (a write cut mid-record).
//!
//! [`LostFs::fail_next_fsyncs`] makes `fsync` fail with `EIO` the way Linux does after a
//! writeback error: the dirty data is dropped from what will reach the disk and counted clean,
//! so a later `fsync` of the same file "succeeds" without it (PostgreSQL's fsyncgate). Every
//! `fsync` that reaches a file after one of its own failed is counted, so a test can assert
//! that a sink never retries.
//!
//! Files are opened with `FOPEN_DIRECT_IO` and every attribute and entry has a zero TTL, so the
//! kernel caches nothing: a process started after [`LostFs::power_on`] reads exactly what
//! survived.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

const NO_TTL: Duration = Duration::ZERO;

/// Why the tests that need FUSE cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("fusermount3").is_file())
    });
    if !found {
        return Some("fusermount3 is not installed (Debian: fuse3)".into());
    }
    None
}

/// Whether a test that needs FUSE should go on: false (with a message) where FUSE is missing,
/// unless `CW_TEST_REQUIRE_FUSE=1` (CI sets it), where a missing FUSE fails the test.
pub fn available_or_skip(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var_os("CW_TEST_REQUIRE_FUSE").is_some_and(|v| v == "1") => {
            panic!("{test}: FUSE is required (CW_TEST_REQUIRE_FUSE=1) but {why}")
        }
        Some(why) => {
            // To the standard error itself: `eprintln!` is kept by the test harness for a test
            // that passes, and this one passes.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {why}; install fuse3 and run as root to run it"
            );
            false
        }
    }
}

/// What a power cut keeps of the data written since the last `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: the durable image only.
    Clean,
    /// A part of it, ending inside a record (not just after a newline).
    Torn,
}

#[derive(Default)]
struct File {
    /// What reads see.
    now: Vec<u8>,
    /// What the disk holds.
    durable: Vec<u8>,
    /// Lowest offset written (or truncated to) since the data last went to the disk, or was
    /// dropped by a failed `fsync`.
    dirty_from: Option<usize>,
    /// An `fsync` of this file failed.
    failed: bool,
    /// `fsync` calls that reached this file after one of its own failed.
    fsyncs_after_failure: u64,
}

impl File {
    fn wrote(&mut self, from: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(from, |d| d.min(from)));
    }

    /// What the disk holds after a good `fsync` that covered `from..upto` (the bytes from the
    /// lowest one written since the last one, to the length when it was called).
    fn sync(&mut self, from: usize, upto: usize) {
        let upto = upto.min(self.now.len());
        let from = from.min(upto);
        // Bytes a failed fsync dropped below `from` read back as zeros from the disk.
        if self.durable.len() < from {
            self.durable.resize(from, 0);
        }
        self.durable.truncate(from);
        self.durable.extend_from_slice(&self.now[from..upto]);
    }
}

struct State {
    files: HashMap<u64, File>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    next_ino: u64,
    /// Open handles: inode and whether it was opened for appending.
    handles: HashMap<u64, (u64, bool)>,
    next_fh: u64,
    powered: bool,
    /// Power cuts so far: an fsync under way across one never completes.
    epoch: u64,
    /// `fsync` calls still to fail with `EIO`.
    failing_fsyncs: u32,
    /// How long an `fsync` takes (a disk's flush; writes go on meanwhile).
    fsync_latency: Duration,
    fsyncs: u64,
    failed_fsyncs: u64,
    dir_syncs: u64,
}

/// The filesystem's shared state: the mounted filesystem serves it, the test inspects and cuts
/// it.
#[derive(Clone)]
pub struct LostFs(Arc<Mutex<State>>);

/// A mounted [`LostFs`]; unmounted on drop.
pub struct Mounted {
    pub fs: LostFs,
    pub dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

const ROOT: u64 = 1;

impl LostFs {
    /// Mounts a new, empty filesystem on `dir` (an existing empty directory).
    pub fn mount(dir: &Path) -> Mounted {
        let fs = LostFs(Arc::new(Mutex::new(State {
            files: HashMap::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            powered: true,
            epoch: 0,
            failing_fsyncs: 0,
            fsync_latency: Duration::from_millis(3),
            fsyncs: 0,
            failed_fsyncs: 0,
            dir_syncs: 0,
        })));
        let mut config = fuser::Config::default();
        // Writes are served while an fsync waits for its "disk".
        config.n_threads = Some(4);
        config.mount_options = vec![
            MountOption::FSName("connwarden-lostfs".into()),
            MountOption::Subtype("lostfs".into()),
        ];
        let session = fuser::spawn_mount(Served(fs.clone()), dir, &config)
            .unwrap_or_else(|e| panic!("mount LostFs on {}: {e}", dir.display()));
        Mounted {
            fs,
            dir: dir.to_owned(),
            session: Some(session),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The power goes: from now on every operation fails with `EIO`.
    pub fn power_cut(&self) {
        let mut state = self.state();
        state.powered = false;
        state.epoch += 1;
    }

    /// The power comes back: each file durably named holds its durable image (with a torn part
    /// of what was not synced, for [`Cut::Torn`]); everything else is gone. Returns the bytes
    /// forgotten.
    pub fn power_on(&self, cut: Cut) -> u64 {
        let mut state = self.state();
        let mut forgotten = 0u64;
        let names = state.durable_names.clone();
        let kept: std::collections::HashSet<u64> = names.values().copied().collect();
        for (ino, file) in state.files.iter() {
            if !kept.contains(ino) {
                forgotten += file.now.len() as u64;
            }
        }
        state.files.retain(|ino, _| kept.contains(ino));
        for file in state.files.values_mut() {
            let mut survived = file.durable.clone();
            // Appended and not synced: the part a torn write may leave.
            // (The sink only appends: what is past the durable image is what was not synced.)
            let pending = file.now.get(survived.len()..).unwrap_or_default();
            if cut == Cut::Torn && pending.len() > 1 {
                // About half of it, cut strictly inside a record: neither just after a newline
                // nor just before one (a record whole but for its newline is no tear).
                let mut keep = pending.len() / 2;
                while keep > 1 && (pending[keep - 1] == b'\n' || pending[keep] == b'\n') {
                    keep -= 1;
                }
                survived.extend_from_slice(&pending[..keep]);
            }
            forgotten += (file.now.len() as u64).saturating_sub(survived.len() as u64);
            file.now = survived.clone();
            file.durable = survived;
            file.dirty_from = None;
        }
        state.names = names;
        state.handles.clear();
        state.powered = true;
        forgotten
    }

    /// The next `n` calls of `fsync` fail with `EIO`, dropping the dirty data.
    pub fn fail_next_fsyncs(&self, n: u32) {
        self.state().failing_fsyncs = n;
    }

    /// What reads of `name` see now.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state();
        let ino = state.names.get(name)?;
        Some(state.files[ino].now.clone())
    }

    /// Bytes of `name` written and not yet on the disk.
    pub fn unsynced_bytes(&self, name: &str) -> usize {
        let state = self.state();
        let Some(file) = state.names.get(name).map(|ino| &state.files[ino]) else {
            return 0;
        };
        file.now.len().saturating_sub(file.durable.len())
    }

    /// The names in the directory now.
    pub fn names(&self) -> Vec<String> {
        self.state().names.keys().cloned().collect()
    }

    /// (fsyncs, failed fsyncs, directory syncs) so far.
    pub fn sync_counts(&self) -> (u64, u64, u64) {
        let state = self.state();
        (state.fsyncs, state.failed_fsyncs, state.dir_syncs)
    }

    /// `fsync` calls that reached a file after one of its own failed, over every file.
    pub fn fsyncs_after_failure(&self) -> u64 {
        self.state()
            .files
            .values()
            .map(|f| f.fsyncs_after_failure)
            .sum()
    }
}

/// The filesystem as the kernel sees it.
struct Served(LostFs);

fn attr(ino: u64, size: usize) -> FileAttr {
    let (kind, perm, nlink) = match ino {
        ROOT => (FileType::Directory, 0o755, 2),
        _ => (FileType::RegularFile, 0o644, 1),
    };
    FileAttr {
        ino: INodeNo(ino),
        size: size as u64,
        blocks: (size as u64).div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: SystemTime::now(),
        ctime: SystemTime::now(),
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Served {
    /// The state, or `EIO` while the power is off.
    fn powered(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let state = self.0.state();
        match state.powered {
            true => Ok(state),
            false => Err(Errno::EIO),
        }
    }
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_owned).ok_or(Errno::EINVAL)
}

impl State {
    fn size(&self, ino: u64) -> usize {
        self.files.get(&ino).map_or(0, |f| f.now.len())
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> FileHandle {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, flags & libc::O_APPEND != 0));
        FileHandle(fh)
    }
}

impl Filesystem for Served {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = (|| {
            let state = self.powered()?;
            if u64::from(parent) != ROOT {
                return Err(Errno::ENOENT);
            }
            let ino = *state.names.get(&name_of(name)?).ok_or(Errno::ENOENT)?;
            Ok(attr(ino, state.size(ino)))
        })();
        match result {
            Ok(attr) => reply.entry(&NO_TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = u64::from(ino);
        match self.powered() {
            Ok(state) if ino == ROOT || state.files.contains_key(&ino) => {
                reply.attr(&NO_TTL, &attr(ino, state.size(ino)))
            }
            Ok(_) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = u64::from(ino);
        let mut state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        if let (Some(size), Some(file)) = (size, state.files.get_mut(&ino)) {
            file.now.resize(size as usize, 0);
            file.wrote(size as usize);
        }
        if ino != ROOT && !state.files.contains_key(&ino) {
            return reply.error(Errno::ENOENT);
        }
        reply.attr(&NO_TTL, &attr(ino, state.size(ino)));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let mut state = self.powered()?;
            state.names.remove(&name_of(name)?).ok_or(Errno::ENOENT)?;
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let mut state = self.powered()?;
            let ino = state.names.remove(&name_of(name)?).ok_or(Errno::ENOENT)?;
            state.names.insert(name_of(newname)?, ino);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = u64::from(ino);
        let mut state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        if !state.files.contains_key(&ino) {
            return reply.error(Errno::ENOENT);
        }
        if flags.0 & libc::O_TRUNC != 0 {
            let file = state.files.get_mut(&ino).expect("checked");
            file.now.clear();
            file.wrote(0);
        }
        let fh = state.open_handle(ino, flags.0);
        reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let mut state = self.powered()?;
            if u64::from(parent) != ROOT {
                return Err(Errno::ENOENT);
            }
            let name = name_of(name)?;
            let ino = match state.names.get(&name) {
                Some(ino) if flags & libc::O_EXCL != 0 => {
                    let _ = ino;
                    return Err(Errno::EEXIST);
                }
                Some(ino) => *ino,
                None => {
                    let ino = state.next_ino;
                    state.next_ino += 1;
                    state.files.insert(ino, File::default());
                    state.names.insert(name, ino);
                    ino
                }
            };
            let fh = state.open_handle(ino, flags);
            Ok((attr(ino, state.size(ino)), fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &NO_TTL,
                &attr,
                Generation(0),
                fh,
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        let Some(file) = state.files.get(&u64::from(ino)) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(file.now.len());
        let end = (start + size as usize).min(file.now.len());
        reply.data(&file.now[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        let append = state.handles.get(&u64::from(fh)).is_some_and(|h| h.1);
        let Some(file) = state.files.get_mut(&u64::from(ino)) else {
            return reply.error(Errno::ENOENT);
        };
        let at = if append {
            file.now.len()
        } else {
            offset as usize
        };
        if file.now.len() < at + data.len() {
            file.now.resize(at + data.len(), 0);
        }
        file.now[at..at + data.len()].copy_from_slice(data);
        file.wrote(at);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.powered() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        self.0.state().handles.remove(&u64::from(fh));
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = u64::from(ino);
        // What this fsync covers: what was written before it was called.
        let (covered, fail, latency, epoch) = {
            let mut state = match self.powered() {
                Ok(state) => state,
                Err(e) => return reply.error(e),
            };
            let fail = state.failing_fsyncs > 0;
            if fail {
                state.failing_fsyncs -= 1;
            }
            let latency = state.fsync_latency;
            let Some(file) = state.files.get_mut(&ino) else {
                return reply.error(Errno::ENOENT);
            };
            if file.failed {
                file.fsyncs_after_failure += 1;
            }
            let covered = (file.dirty_from.take(), file.now.len());
            (covered, fail, latency, state.epoch)
        };
        // The disk at work; writes go on meanwhile (the session has several threads).
        std::thread::sleep(latency);
        let mut state = self.0.state();
        if state.epoch != epoch {
            // The power went and came back: the file was put back as the disk had it.
            return reply.error(Errno::EIO);
        }
        let powered = state.powered;
        match (powered, fail) {
            (true, false) => state.fsyncs += 1,
            (true, true) => state.failed_fsyncs += 1,
            (false, _) => {}
        }
        let Some(file) = state.files.get_mut(&ino) else {
            return reply.error(Errno::ENOENT);
        };
        let (from, upto) = covered;
        match (powered, fail) {
            // The power went before the disk was done: nothing is promised.
            (false, _) => {
                if let Some(from) = from {
                    file.wrote(from);
                }
                reply.error(Errno::EIO);
            }
            // Linux after a writeback error: the dirty pages are dropped from what will reach
            // the disk and counted clean; the error is reported once.
            (true, true) => {
                file.failed = true;
                reply.error(Errno::EIO);
            }
            (true, false) => {
                if let Some(from) = from {
                    file.sync(from, upto);
                }
                reply.ok();
            }
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.powered() {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
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
        let state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        if u64::from(ino) != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [(ROOT, FileType::Directory, ".".to_owned())]
            .into_iter()
            .chain([(ROOT, FileType::Directory, "..".to_owned())])
            .chain(
                state
                    .names
                    .iter()
                    .map(|(name, ino)| (*ino, FileType::RegularFile, name.clone())),
            );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = match self.powered() {
            Ok(state) => state,
            Err(e) => return reply.error(e),
        };
        state.durable_names = state.names.clone();
        state.dir_syncs += 1;
        reply.ok();
    }
}
