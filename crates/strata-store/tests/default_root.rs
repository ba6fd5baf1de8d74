//! `Store::default_root` precedence. Its own test binary: it changes the environment.

use std::path::PathBuf;

use strata_store::Store;

#[test]
fn default_root_precedence() {
    std::env::set_var("HOME", "/home/u");
    std::env::set_var("XDG_DATA_HOME", "/xdg");
    std::env::set_var("STRATA_STORE", "/explicit");
    assert_eq!(Store::default_root(), Some(PathBuf::from("/explicit")));
    std::env::set_var("STRATA_STORE", "");
    assert_eq!(Store::default_root(), Some(PathBuf::from("/xdg/strata")));
    std::env::remove_var("STRATA_STORE");
    std::env::set_var("XDG_DATA_HOME", "relative/dir");
    assert_eq!(Store::default_root(), Some(PathBuf::from("/home/u/.local/share/strata")));
    std::env::remove_var("XDG_DATA_HOME");
    assert_eq!(Store::default_root(), Some(PathBuf::from("/home/u/.local/share/strata")));
    std::env::remove_var("HOME");
    assert_eq!(Store::default_root(), None);
}
