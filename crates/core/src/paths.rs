//! Where profiles live: one directory per profile under the platform's per-user data
//! directory (`$XDG_DATA_HOME/cairn/profiles/NAME` on Linux), so several profiles —
//! and several running instances — can sit side by side.

use std::path::PathBuf;

use directories::ProjectDirs;

use crate::{CoreError, Result};

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";

/// Checks that `name` is a safe directory name: 1–64 of `[A-Za-z0-9_-]`.
pub fn validate_profile_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(()).ok_or(CoreError::InvalidProfileName)
}

/// The directory of the profile called `name`.
pub fn default_profile_dir(name: &str) -> Result<PathBuf> {
    validate_profile_name(name)?;
    let dirs = ProjectDirs::from("org", "Cairn", "Cairn").ok_or(CoreError::NoDataDir)?;
    Ok(dirs.data_dir().join("profiles").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_cannot_escape_the_profiles_directory() {
        for bad in ["", "..", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_profile_name(bad).is_err(), "{bad:?}");
        }
        for good in ["default", "alice-2", "Bob_x"] {
            validate_profile_name(good).unwrap();
            assert!(default_profile_dir(good).unwrap().ends_with(good));
        }
    }
}
