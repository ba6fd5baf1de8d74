//! Placeholder: being written (helper: parser).
use crate::ast::Ast;
use crate::error::{ParseError, ParseErrorKind, Span};
pub(crate) fn parse(_src: &str) -> Result<Ast, ParseError> {
    Err(ParseError::new(ParseErrorKind::NoStages, Span::default()))
}
