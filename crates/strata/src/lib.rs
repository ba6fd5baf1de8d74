//! strata: the embedding API.
#![deny(missing_docs)]
pub use strata_recipe as recipe;
