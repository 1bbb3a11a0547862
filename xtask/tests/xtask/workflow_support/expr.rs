//! GitHub Actions expressions (`${{ ... }}` and `if:`), as far as this repository's workflows
//! use them: contexts (`vars`, `secrets`, `env`, `github`, `runner`, `steps`, `needs`),
//! string, number and boolean literals, `!`, `==`, `!=`, `&&`, `||`, parentheses, and the
//! status functions. Values and comparisons follow GitHub's rules (docs, "Expressions"):
//! `||`/`&&` return an operand, strings compare ignoring case, operands of different types
//! compare as numbers (null and '' are 0).
//!
//! Reading an output of a step or job that never set it is an *error* here, where GitHub
//! silently gives ''. That is the point: such a reference is a bug a real night would only
//! show as an empty argument.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

impl Val {
    pub fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
        }
    }

    /// As GitHub writes a value into a string.
    pub fn text(&self) -> String {
        match self {
            Val::Null => String::new(),
            Val::Bool(b) => b.to_string(),
            Val::Num(n) => n.to_string(),
            Val::Str(s) => s.clone(),
        }
    }

    fn number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) if s.trim().is_empty() => 0.0,
            Val::Str(s) => s.trim().parse().unwrap_or(f64::NAN),
        }
    }

    fn equals(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Str(a), Val::Str(b)) => a.eq_ignore_ascii_case(b),
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            _ => self.number() == other.number(),
        }
    }
}

/// What an expression can see. `lookup` answers a context path (`vars.X`,
/// `steps.pin.outputs.release`), `status` the status functions.
pub trait Context {
    fn lookup(&self, path: &[String]) -> Result<Val, String>;
    /// `success()`: everything before succeeded; `failure()`: something failed.
    fn succeeded(&self) -> bool;
}

/// Evaluates `expression` (without `${{ }}`).
pub fn eval(expression: &str, context: &dyn Context) -> Result<Val, String> {
    let tokens = tokenize(expression)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        context,
    };
    let value = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!(
            "unexpected `{:?}` in `{expression}`",
            parser.tokens[parser.at]
        ));
    }
    Ok(value)
}

/// Whether `expression` calls a status function (otherwise an `if:` means `success() && ...`).
pub fn uses_status_function(expression: &str) -> bool {
    ["success()", "failure()", "always()", "cancelled()"]
        .iter()
        .any(|f| expression.contains(f))
}

/// Replaces every `${{ ... }}` in `text` by its value.
pub fn interpolate(text: &str, context: &dyn Context) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed ${{{{ in `{text}`"))?;
        out.push_str(&eval(after[..end].trim(), context)?.text());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An `if:` condition (with or without `${{ }}`).
pub fn condition(text: &str, context: &dyn Context) -> Result<bool, String> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix("${{")
        .and_then(|t| t.strip_suffix("}}"))
        .unwrap_or(trimmed)
        .trim();
    let value = eval(inner, context)?.truthy();
    Ok(if uses_status_function(inner) {
        value
    } else {
        context.succeeded() && value
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Num(f64),
    Ident(String),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Not,
    Eq,
    Ne,
    And,
    Or,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in `{text}`")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(other) => {
                            s.push(*other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(s));
            }
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '[' => {
                tokens.push(Token::LBracket);
                i += 1;
            }
            ']' => {
                tokens.push(Token::RBracket);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            _ if two == "==" => {
                tokens.push(Token::Eq);
                i += 2;
            }
            _ if two == "!=" => {
                tokens.push(Token::Ne);
                i += 2;
            }
            _ if two == "&&" => {
                tokens.push(Token::And);
                i += 2;
            }
            _ if two == "||" => {
                tokens.push(Token::Or);
                i += 2;
            }
            '!' => {
                tokens.push(Token::Not);
                i += 1;
            }
            _ if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let number: String = chars[start..i].iter().collect();
                tokens.push(Token::Num(
                    number.parse().map_err(|e| format!("{number}: {e}"))?,
                ));
            }
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected `{other}` in `{text}`")),
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    context: &'a dyn Context,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn take(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Val, String> {
        let mut value = self.and()?;
        while self.take(&Token::Or) {
            let right = self.and()?;
            if !value.truthy() {
                value = right;
            }
        }
        Ok(value)
    }

    fn and(&mut self) -> Result<Val, String> {
        let mut value = self.unary()?;
        while self.take(&Token::And) {
            let right = self.unary()?;
            if value.truthy() {
                value = right;
            }
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<Val, String> {
        if self.take(&Token::Not) {
            return Ok(Val::Bool(!self.unary()?.truthy()));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Val, String> {
        let left = self.primary()?;
        if self.take(&Token::Eq) {
            let right = self.primary()?;
            return Ok(Val::Bool(left.equals(&right)));
        }
        if self.take(&Token::Ne) {
            let right = self.primary()?;
            return Ok(Val::Bool(!left.equals(&right)));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Val, String> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or("the expression ends too early")?;
        self.at += 1;
        match token {
            Token::Str(s) => Ok(Val::Str(s)),
            Token::Num(n) => Ok(Val::Num(n)),
            Token::LParen => {
                let value = self.or()?;
                if !self.take(&Token::RParen) {
                    return Err("a `(` is not closed".into());
                }
                Ok(value)
            }
            Token::Ident(name) if self.peek() == Some(&Token::LParen) => {
                self.at += 1;
                if !self.take(&Token::RParen) {
                    return Err(format!(
                        "{name}(): only functions without arguments are rehearsed"
                    ));
                }
                match name.as_str() {
                    "always" => Ok(Val::Bool(true)),
                    "success" => Ok(Val::Bool(self.context.succeeded())),
                    "failure" => Ok(Val::Bool(!self.context.succeeded())),
                    "cancelled" => Ok(Val::Bool(false)),
                    other => Err(format!("{other}() is not rehearsed")),
                }
            }
            Token::Ident(name) => match name.as_str() {
                "true" => Ok(Val::Bool(true)),
                "false" => Ok(Val::Bool(false)),
                "null" => Ok(Val::Null),
                _ => {
                    let mut path = vec![name];
                    loop {
                        if self.take(&Token::Dot) {
                            match self.tokens.get(self.at).cloned() {
                                Some(Token::Ident(part)) => {
                                    path.push(part);
                                    self.at += 1;
                                }
                                other => return Err(format!("`.` followed by {other:?}")),
                            }
                        } else if self.take(&Token::LBracket) {
                            match self.tokens.get(self.at).cloned() {
                                Some(Token::Str(part)) => {
                                    path.push(part);
                                    self.at += 1;
                                }
                                other => return Err(format!("`[` followed by {other:?}")),
                            }
                            if !self.take(&Token::RBracket) {
                                return Err("a `[` is not closed".into());
                            }
                        } else {
                            break;
                        }
                    }
                    self.context.lookup(&path)
                }
            },
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

/// A plain map context, for the evaluator's own tests.
pub struct MapContext {
    pub values: BTreeMap<String, Val>,
    pub succeeded: bool,
}

impl Context for MapContext {
    fn lookup(&self, path: &[String]) -> Result<Val, String> {
        Ok(self
            .values
            .get(&path.join("."))
            .cloned()
            .unwrap_or(Val::Null))
    }

    fn succeeded(&self) -> bool {
        self.succeeded
    }
}
