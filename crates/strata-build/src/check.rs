//! Build checks before a build: the recipe's lint warnings (`strata_recipe::check`) with what
//! only a builder can supply, read from disk and the store.
//!
//! The rules live in strata-recipe, which does no I/O. This module gives them the recipe read
//! from [`BuildOptions::recipe_path`], the `.dockerignore` the build would use (for
//! `CopyIgnoredFile`) and, for `UndefinedVar`, the environment of base images the store
//! already holds (never pulled: a base the store lacks leaves its stage unchecked for
//! undefined variables). [`check`] is `docker build --check`; [`crate::build`] runs the same
//! checks on the stages it builds, reports each warning as a [`crate::BuildEvent::CheckWarning`]
//! and fails before any step when the recipe says `# check=error=true`.

use strata_recipe::check::{self, CheckOptions, CheckReport};
use strata_recipe::{DockerIgnore, Recipe};
use strata_store::Store;
use strata_types::ImageLocation;

use crate::error::{BuildError, Result};
use crate::options::{self, BuildOptions};

/// Runs the build checks on the recipe of `opts` without building: the stages
/// [`BuildOptions::target`] needs, every stage when it is `None` (as `docker build --check`).
/// `store`, when given, supplies the environment of base images it holds.
pub fn check(store: Option<&Store>, opts: &BuildOptions) -> Result<CheckReport> {
    let text = options::read_recipe(opts)?;
    let recipe = strata_recipe::parse(&text).map_err(|e| parse_error(opts, e))?;
    let ignore = crate::load_dockerignore(opts)?;
    check_recipe(store, opts, &recipe, &ignore, opts.target.clone())
}

/// The checks of `recipe` for `target` (a stage name or index, `None` for all stages).
pub(crate) fn check_recipe(
    store: Option<&Store>,
    opts: &BuildOptions,
    recipe: &Recipe,
    ignore: &DockerIgnore,
    target: Option<String>,
) -> Result<CheckReport> {
    let base_env = |reference: &str| store.and_then(|s| stored_env(s, reference));
    let check_opts = CheckOptions {
        build_args: opts.build_args.clone(),
        target,
        ignore: Some(ignore),
        base_env: Some(&base_env),
    };
    check::run(recipe, &check_opts).map_err(|e| parse_error(opts, e))
}

fn parse_error(opts: &BuildOptions, source: strata_recipe::ParseError) -> BuildError {
    BuildError::Parse { path: opts.recipe_path.clone(), source: Box::new(source) }
}

/// The `Env` of the image `FROM` names, when the store holds it under that name (a registry
/// base is tagged with its `host/repo:tag` once pulled).
fn stored_env(store: &Store, reference: &str) -> Option<Vec<(String, String)>> {
    let name = match reference.parse::<ImageLocation>().ok()? {
        ImageLocation::Store(name) => name,
        ImageLocation::Registry(r) => r.to_string(),
        _ => return None,
    };
    let image = store.load_image(&name).ok()?;
    let env = image.config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
    Some(
        env.iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect(),
    )
}
