//! The binding expression language: parsed once at bind time, evaluated per message.
//!
//! ```text
//! expr     := and ("||" and)*
//! and      := unary ("&&" unary)*
//! unary    := "!" unary | "(" expr ")" | "exists" "(" path ")" | test
//! test     := operand (cmp operand | "in" "[" literal ("," literal)* "]")?
//! cmp      := "==" | "!=" | "<" | "<=" | ">" | ">="
//! operand  := path | literal
//! path     := name ("." (name | index))*        e.g. order.items.0.sku
//! literal  := "string" | number | true | false | null
//! ```
//!
//! A path names a field of the JSON body; a missing field makes every comparison with it
//! false (`!=` included: use `exists(path)` to test for presence). `==`/`!=` compare JSON
//! values (numbers by value), `<`, `<=`, `>`, `>=` compare two numbers or two strings and
//! are false otherwise. A lone operand is true when it is the JSON value `true`.

use serde_json::Value;

/// Longest accepted expression, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of `(`, `!` and `exists(`, so evaluation cannot exhaust the stack.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(Path),
    Compare(Operand, Cmp, Operand),
    In(Operand, Vec<Value>),
    /// A lone operand: true when it is `true`.
    Truthy(Operand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path(Vec<String>);

impl Path {
    /// The value at this path in `doc`; a numeric segment also indexes arrays.
    fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(doc, |v, seg| match v {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

impl Operand {
    fn eval<'a>(&'a self, doc: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Path(p) => p.lookup(doc),
            Operand::Literal(v) => Some(v),
        }
    }
}

/// JSON equality with numbers compared by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Expr {
    /// Whether the JSON document `doc` satisfies the expression.
    pub fn eval(&self, doc: &Value) -> bool {
        match self {
            Expr::Or(terms) => terms.iter().any(|t| t.eval(doc)),
            Expr::And(terms) => terms.iter().all(|t| t.eval(doc)),
            Expr::Not(e) => !e.eval(doc),
            Expr::Exists(p) => p.lookup(doc).is_some(),
            Expr::Truthy(o) => matches!(o.eval(doc), Some(Value::Bool(true))),
            Expr::In(o, set) => o
                .eval(doc)
                .is_some_and(|v| set.iter().any(|s| json_eq(v, s))),
            Expr::Compare(l, cmp, r) => {
                let (Some(a), Some(b)) = (l.eval(doc), r.eval(doc)) else {
                    return false;
                };
                match cmp {
                    Cmp::Eq => json_eq(a, b),
                    Cmp::Ne => !json_eq(a, b),
                    _ => {
                        let order = match (a, b) {
                            (Value::Number(x), Value::Number(y)) => {
                                x.as_f64().partial_cmp(&y.as_f64())
                            }
                            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                            _ => None,
                        };
                        order.is_some_and(|o| match cmp {
                            Cmp::Lt => o.is_lt(),
                            Cmp::Le => o.is_le(),
                            Cmp::Gt => o.is_gt(),
                            _ => o.is_ge(),
                        })
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Literal(Value),
    Punct(&'static str),
}

/// Splits `src` into (byte offset, token) pairs.
fn tokenize(src: &str) -> Result<Vec<(usize, Token)>, String> {
    const PUNCT: [&str; 14] = [
        "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "(", ")", "[", "]", ",",
    ];
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'.' {
            tokens.push((start, Token::Punct(".")));
            i += 1;
        } else if c == b'"' {
            // Find the closing quote, skipping escaped characters, and let the JSON
            // parser decode the escapes.
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(format!("unterminated string at byte {start}")),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            // Into a `Value`, not a `String`: the typed path drags float formatting (for
            // its error messages) into the plugin, 60 KB of code to compile.
            match serde_json::from_str::<Value>(&src[start..i]) {
                Ok(text @ Value::String(_)) => tokens.push((start, Token::Literal(text))),
                _ => return Err(format!("bad string at byte {start}")),
            }
        } else if c.is_ascii_digit() && matches!(tokens.last(), Some((_, Token::Punct(".")))) {
            // An array index in a path (`items.0.sku`): digits only.
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let index = src[start..i]
                .parse::<u64>()
                .map_err(|_| format!("bad index at byte {start}"))?;
            tokens.push((start, Token::Literal(Value::from(index))));
        } else if c == b'-' || c.is_ascii_digit() {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'.' | b'+' | b'-'))
            {
                i += 1;
            }
            let number: serde_json::Number = src[start..i]
                .parse()
                .map_err(|_| format!("bad number `{}` at byte {start}", &src[start..i]))?;
            tokens.push((start, Token::Literal(Value::Number(number))));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'-'))
            {
                i += 1;
            }
            let word = &src[start..i];
            let token = match word {
                "true" => Token::Literal(Value::Bool(true)),
                "false" => Token::Literal(Value::Bool(false)),
                "null" => Token::Literal(Value::Null),
                _ => Token::Name(word.to_owned()),
            };
            tokens.push((start, token));
        } else {
            let Some(p) = PUNCT.iter().find(|p| src[i..].starts_with(**p)) else {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected `{ch}` at byte {start}"));
            };
            tokens.push((start, Token::Punct(p)));
            i += p.len();
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn error(&self, expected: &str) -> String {
        match self.peek() {
            None => format!("expected {expected} at the end"),
            Some(_) => format!("expected {expected} at byte {}", self.offset()),
        }
    }

    fn eat(&mut self, punct: &'static str) -> bool {
        if self.peek() == Some(&Token::Punct(punct)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &'static str) -> Result<(), String> {
        if self.eat(punct) {
            Ok(())
        } else {
            Err(self.error(&format!("`{punct}`")))
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut terms = vec![self.and()?];
        while self.eat("||") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut terms = vec![self.unary()?];
        while self.eat("&&") {
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.unary()?))));
        }
        if self.eat("(") {
            return self.nested(|p| {
                let e = p.or()?;
                p.expect(")")?;
                Ok(e)
            });
        }
        if self.peek() == Some(&Token::Name("exists".into()))
            && self.tokens.get(self.pos + 1).map(|(_, t)| t) == Some(&Token::Punct("("))
        {
            self.pos += 2;
            let path = self.path()?;
            self.expect(")")?;
            return Ok(Expr::Exists(path));
        }
        self.test()
    }

    fn test(&mut self) -> Result<Expr, String> {
        let left = self.operand()?;
        if self.peek() == Some(&Token::Name("in".into())) {
            self.pos += 1;
            self.expect("[")?;
            let mut set = Vec::new();
            if !self.eat("]") {
                loop {
                    match self.peek().cloned() {
                        Some(Token::Literal(v)) => {
                            self.pos += 1;
                            set.push(v);
                        }
                        _ => return Err(self.error("a literal in the `in` list")),
                    }
                    if self.eat("]") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            return Ok(Expr::In(left, set));
        }
        let cmp = [
            ("==", Cmp::Eq),
            ("!=", Cmp::Ne),
            ("<=", Cmp::Le),
            (">=", Cmp::Ge),
            ("<", Cmp::Lt),
            (">", Cmp::Gt),
        ]
        .into_iter()
        .find(|(p, _)| self.peek() == Some(&Token::Punct(p)));
        match cmp {
            Some((_, cmp)) => {
                self.pos += 1;
                let right = self.operand()?;
                Ok(Expr::Compare(left, cmp, right))
            }
            None => Ok(Expr::Truthy(left)),
        }
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.peek().cloned() {
            Some(Token::Literal(v)) => {
                self.pos += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Name(_)) => Ok(Operand::Path(self.path()?)),
            _ => Err(self.error("a field path or a literal")),
        }
    }

    fn path(&mut self) -> Result<Path, String> {
        let mut segments = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Token::Name(name)) => segments.push(name),
                // An index such as `items.0`: the tokenizer reads `0` as a number.
                Some(Token::Literal(Value::Number(n))) if !segments.is_empty() => {
                    match n.as_u64() {
                        Some(index) => segments.push(index.to_string()),
                        None => return Err(self.error("a field name")),
                    }
                }
                _ => return Err(self.error("a field name")),
            }
            self.pos += 1;
            if !self.eat(".") {
                return Ok(Path(segments));
            }
        }
    }
}

/// Parses an expression, with a message that says what was expected where.
pub fn parse(src: &str) -> Result<Expr, String> {
    if src.len() > MAX_LEN {
        return Err(format!("the expression is longer than {MAX_LEN} bytes"));
    }
    let tokens = tokenize(src)?;
    if tokens.is_empty() {
        return Err("the expression is empty".into());
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: src.len(),
        depth: 0,
    };
    let expr = parser.or()?;
    if parser.pos < parser.tokens.len() {
        return Err(parser.error("`&&`, `||` or the end"));
    }
    Ok(expr)
}
