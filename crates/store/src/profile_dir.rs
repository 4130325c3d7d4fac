//! A profile on disk: the directory, which key source opens it, and the lock that
//! keeps two running apps from opening the same profile.
//!
//! `key.json` records only where the key comes from (the OS keyring, or a passphrase
//! with its Argon2id salt and parameters). It is written last, atomically, so a
//! profile exists exactly when `key.json` does.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DbKey, KdfParams, KeyVault, ProfileDb, Result, StoreError};

const DB_FILE: &str = "profile.db";
/// The peer cache's database: envelopes held for others (already sealed, so plain SQLite).
const CACHE_FILE: &str = "cache.db";
const KEY_FILE: &str = "key.json";
const LOCK_FILE: &str = "profile.lock";
/// `key.json` is a few hundred bytes; anything bigger is not ours.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Where a profile's database key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum KeySource {
    /// 32 random bytes in the OS keyring.
    Keyring,
    /// Derived from a passphrase the person types, with these parameters.
    Passphrase {
        /// Argon2id salt and costs.
        kdf: KdfParams,
    },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    #[serde(flatten)]
    source: KeySource,
}

/// A profile directory.
#[derive(Debug, Clone)]
pub struct ProfileDir {
    root: PathBuf,
}

impl ProfileDir {
    /// The profile stored under `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLCipher database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    /// The peer cache's database file: envelopes this device holds for others.
    pub fn cache_path(&self) -> PathBuf {
        self.root.join(CACHE_FILE)
    }

    /// How this profile is unlocked, or `None` if no profile has been created here.
    pub fn key_source(&self) -> Result<Option<KeySource>> {
        let path = self.root.join(KEY_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut text = String::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|_| StoreError::Corrupt(format!("{} is not text", path.display())))?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(StoreError::Corrupt(format!("{} is too large", path.display())));
        }
        let key_file: KeyFile =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if key_file.version != 1 {
            return Err(StoreError::Corrupt(format!(
                "{} has unknown version {}",
                path.display(),
                key_file.version
            )));
        }
        if let KeySource::Passphrase { kdf } = &key_file.source {
            kdf.check()?;
        }
        Ok(Some(key_file.source))
    }

    /// The name this profile's key has in the keyring: unique per profile directory,
    /// so profiles (and test runs) never share a key.
    pub fn keyring_user(&self) -> Result<String> {
        let root = fs::canonicalize(&self.root)?;
        Ok(format!("profile:{}", root.display()))
    }

    /// Creates a new profile whose key is random and kept in `vault`.
    pub fn create_with_keyring(&self, vault: &KeyVault) -> Result<ProfileDb> {
        let lock = self.prepare_create()?;
        let key = DbKey::random();
        vault.put(&self.keyring_user()?, &key)?;
        self.finish_create(lock, &key, KeySource::Keyring)
    }

    /// Creates a new profile whose key is derived from `passphrase`.
    pub fn create_with_passphrase(&self, passphrase: &str, kdf: KdfParams) -> Result<ProfileDb> {
        kdf.check()?;
        let lock = self.prepare_create()?;
        let key = DbKey::from_passphrase(passphrase, &kdf)?;
        self.finish_create(lock, &key, KeySource::Passphrase { kdf })
    }

    /// Opens a keyring profile.
    pub fn open_with_keyring(&self, vault: &KeyVault) -> Result<ProfileDb> {
        match self.key_source()? {
            Some(KeySource::Keyring) => {}
            Some(KeySource::Passphrase { .. }) => {
                return Err(StoreError::Corrupt("this profile is opened with a passphrase".into()))
            }
            None => return Err(StoreError::NotFound(self.root.display().to_string())),
        }
        let lock = self.lock()?;
        let key = vault.get(&self.keyring_user()?)?;
        ProfileDb::open(&self.db_path(), &key).map(|db| db.holding(lock))
    }

    /// Opens a passphrase profile; a wrong passphrase gives [`StoreError::WrongKey`].
    pub fn open_with_passphrase(&self, passphrase: &str) -> Result<ProfileDb> {
        let kdf = match self.key_source()? {
            Some(KeySource::Passphrase { kdf }) => kdf,
            Some(KeySource::Keyring) => {
                return Err(StoreError::Corrupt("this profile is opened from the keyring".into()))
            }
            None => return Err(StoreError::NotFound(self.root.display().to_string())),
        };
        let lock = self.lock()?;
        let key = DbKey::from_passphrase(passphrase, &kdf)?;
        ProfileDb::open(&self.db_path(), &key).map(|db| db.holding(lock))
    }

    /// Takes the profile lock: only one running Cairn may have a profile open.
    fn lock(&self) -> Result<File> {
        fs::create_dir_all(&self.root)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => Err(StoreError::ProfileInUse),
            Err(TryLockError::Error(e)) => Err(e.into()),
        }
    }

    fn prepare_create(&self) -> Result<File> {
        let lock = self.lock()?;
        if self.key_source()?.is_some() {
            return Err(StoreError::AlreadyExists(self.root.display().to_string()));
        }
        // A database without key.json is what an interrupted creation leaves behind.
        // It holds no account yet, but it is moved aside rather than deleted.
        let db = self.db_path();
        if db.exists() {
            let aside = self.root.join(format!("{DB_FILE}.unfinished-{}", std::process::id()));
            tracing::warn!(from = %db.display(), to = %aside.display(), "moving aside an unfinished profile database");
            fs::rename(&db, &aside)?;
            for suffix in ["-wal", "-shm"] {
                let _ = fs::remove_file(self.root.join(format!("{DB_FILE}{suffix}")));
            }
        }
        Ok(lock)
    }

    fn finish_create(&self, lock: File, key: &DbKey, source: KeySource) -> Result<ProfileDb> {
        let db = ProfileDb::create(&self.db_path(), key)?;
        let text = serde_json::to_string_pretty(&KeyFile { version: 1, source })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = self.root.join(format!("{KEY_FILE}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, self.root.join(KEY_FILE))?;
        Ok(db.holding(lock))
    }
}
