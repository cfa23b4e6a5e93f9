//! A small arithmetic language for values made of named aggregates:
//! `food_cost / sales * 100`, `spend / max(conversions, 1)`.
//!
//! Numbers, names, `+ - * / %`, `^` (power), unary minus, parentheses and
//! the functions `min`, `max` (one or more arguments), `abs`, `round`,
//! `floor`, `ceil` and `sqrt`. Nothing else: no assignment, no strings, no
//! loops, so an expression costs at most a few hundred steps.
//!
//! Bounded where it is read: at most [`MAX_LEN`] characters, [`MAX_NODES`]
//! terms and [`MAX_DEPTH`] levels of nesting; a name must be one the caller
//! allows, so a typo is an error when the rule is loaded, not a silent
//! "no data" at 3 am. An evaluation whose result is not a finite number
//! (a division by zero, an input missing) has no value.

use std::fmt;

pub const MAX_LEN: usize = 512;
pub const MAX_NODES: usize = 256;
pub const MAX_DEPTH: usize = 32;

/// A parsed expression over the names it was parsed with.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    text: String,
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f64),
    /// An input, by its index in the names the expression was parsed with.
    Var(usize),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Min,
    Max,
    Abs,
    Round,
    Floor,
    Ceil,
    Sqrt,
}

impl Func {
    fn parse(name: &str) -> Option<Func> {
        Some(match name {
            "min" => Func::Min,
            "max" => Func::Max,
            "abs" => Func::Abs,
            "round" => Func::Round,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "sqrt" => Func::Sqrt,
            _ => return None,
        })
    }

    /// Whether it takes one argument only (min and max take one or more).
    fn unary(self) -> bool {
        !matches!(self, Func::Min | Func::Max)
    }
}

/// Why an expression was refused: what, and at which character (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Name(String),
    Sym(char),
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let at = text[..pos].chars().count() + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || chars[i].1 == '.') {
                // An exponent's sign belongs to the number: 1e-3.
                if matches!(chars[i].1, 'e' | 'E')
                    && chars.get(i + 1).is_some_and(|n| matches!(n.1, '+' | '-'))
                {
                    i += 1;
                }
                i += 1;
            }
            let end = chars.get(i).map_or(text.len(), |c| c.0);
            let word = &text[pos..end];
            let n: f64 = word.parse().map_err(|_| ParseError {
                at,
                message: format!("{word:?} is not a number"),
            })?;
            if !n.is_finite() {
                return Err(ParseError {
                    at,
                    message: format!("{word:?} is too large"),
                });
            }
            out.push((at, Token::Num(n)));
            debug_assert!(i > start);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = pos;
            while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || chars[i].1 == '_') {
                i += 1;
            }
            let end = chars.get(i).map_or(text.len(), |c| c.0);
            out.push((at, Token::Name(text[start..end].to_owned())));
        } else if "+-*/%^(),".contains(c) {
            out.push((at, Token::Sym(c)));
            i += 1;
        } else {
            return Err(ParseError {
                at,
                message: format!(
                    "{c:?} is not part of an expression (numbers, names, + - * / % ^ and parentheses)"
                ),
            });
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    next: usize,
    names: &'a [&'a str],
    nodes: usize,
    depth: usize,
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|t| &t.1)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |t| t.0)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.at(),
            message: message.into(),
        })
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Sym(c)) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn node(&mut self, n: Node) -> Result<Node, ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.fail(format!("more than {MAX_NODES} terms"));
        }
        Ok(n)
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!("nested more than {MAX_DEPTH} deep"));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> Result<Node, ParseError> {
        let mut left = self.product()?;
        loop {
            let op = if self.eat('+') {
                Op::Add
            } else if self.eat('-') {
                Op::Sub
            } else {
                return Ok(left);
            };
            let right = self.product()?;
            left = self.node(Node::Bin(op, Box::new(left), Box::new(right)))?;
        }
    }

    /// product := unary (('*' | '/' | '%') unary)*
    fn product(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat('*') {
                Op::Mul
            } else if self.eat('/') {
                Op::Div
            } else if self.eat('%') {
                Op::Rem
            } else {
                return Ok(left);
            };
            let right = self.unary()?;
            left = self.node(Node::Bin(op, Box::new(left), Box::new(right)))?;
        }
    }

    /// unary := '-' unary | power
    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.eat('-') {
            let inner = self.nested(Self::unary)?;
            return self.node(Node::Neg(Box::new(inner)));
        }
        self.eat('+');
        self.power()
    }

    /// power := atom ('^' unary)?   (right-associative: 2^3^2 = 2^9)
    fn power(&mut self) -> Result<Node, ParseError> {
        let base = self.atom()?;
        if self.eat('^') {
            let exp = self.nested(Self::unary)?;
            return self.node(Node::Bin(Op::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Node, ParseError> {
        match self.peek().cloned() {
            Some(Token::Num(n)) => {
                self.next += 1;
                self.node(Node::Num(n))
            }
            Some(Token::Name(name)) => {
                let at = self.at();
                self.next += 1;
                if self.eat('(') {
                    let Some(func) = Func::parse(&name) else {
                        return Err(ParseError {
                            at,
                            message: format!(
                                "{name:?} is not a function (min, max, abs, round, floor, ceil, sqrt)"
                            ),
                        });
                    };
                    let mut args = Vec::new();
                    loop {
                        args.push(self.nested(Self::sum)?);
                        if self.eat(',') {
                            continue;
                        }
                        if self.eat(')') {
                            break;
                        }
                        return self.fail("expected ',' or ')' in the arguments");
                    }
                    if func.unary() && args.len() != 1 {
                        return Err(ParseError {
                            at,
                            message: format!("{name} takes one argument, not {}", args.len()),
                        });
                    }
                    return self.node(Node::Call(func, args));
                }
                match self.names.iter().position(|n| *n == name) {
                    Some(i) => self.node(Node::Var(i)),
                    None => Err(ParseError {
                        at,
                        message: if self.names.is_empty() {
                            format!("{name:?} is not defined (no inputs are)")
                        } else {
                            format!("{name:?} is not defined: one of {}", self.names.join(", "))
                        },
                    }),
                }
            }
            Some(Token::Sym('(')) => {
                self.next += 1;
                let inner = self.nested(Self::sum)?;
                if !self.eat(')') {
                    return self.fail("expected ')'");
                }
                Ok(inner)
            }
            Some(Token::Sym(c)) => {
                self.fail(format!("expected a number, a name or '(', not {c:?}"))
            }
            None => self.fail("the expression ends early"),
        }
    }
}

impl Expr {
    /// Parses `text`, whose names must be among `names`; [`Expr::eval`]
    /// takes their values in that order.
    pub fn parse(text: &str, names: &[&str]) -> Result<Expr, ParseError> {
        if text.len() > MAX_LEN {
            return Err(ParseError {
                at: MAX_LEN,
                message: format!("longer than {MAX_LEN} characters"),
            });
        }
        let tokens = tokens(text)?;
        let mut p = Parser {
            tokens,
            next: 0,
            names,
            nodes: 0,
            depth: 0,
            end: text.chars().count() + 1,
        };
        if p.tokens.is_empty() {
            return p.fail("empty");
        }
        let root = p.sum()?;
        if p.next < p.tokens.len() {
            return p.fail("expected an operator or the end");
        }
        Ok(Expr {
            text: text.to_owned(),
            root,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value with the inputs `values` (in the order of the names it was
    /// parsed with; `None`: no data); `None` when an input it uses has no
    /// data or the result is not a finite number.
    pub fn eval(&self, values: &[Option<f64>]) -> Option<f64> {
        let v = eval(&self.root, values)?;
        v.is_finite().then_some(v)
    }

    /// Which inputs it reads (indexes into its names).
    pub fn uses(&self) -> Vec<usize> {
        fn walk(n: &Node, out: &mut Vec<usize>) {
            match n {
                Node::Num(_) => {}
                Node::Var(i) => {
                    if !out.contains(i) {
                        out.push(*i);
                    }
                }
                Node::Neg(a) => walk(a, out),
                Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// A node's value; none as soon as any part is not a finite number (so
/// `max(sqrt(-1), 0)` is none, not 0).
fn eval(n: &Node, values: &[Option<f64>]) -> Option<f64> {
    let v = eval_node(n, values)?;
    v.is_finite().then_some(v)
}

fn eval_node(n: &Node, values: &[Option<f64>]) -> Option<f64> {
    Some(match n {
        Node::Num(x) => *x,
        Node::Var(i) => values.get(*i).copied().flatten()?,
        Node::Neg(a) => -eval(a, values)?,
        Node::Bin(op, a, b) => {
            let (a, b) = (eval(a, values)?, eval(b, values)?);
            match op {
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
                // x/0 is no value, not infinity: food cost % of a day
                // without sales says nothing.
                Op::Div if b == 0.0 => return None,
                Op::Div => a / b,
                Op::Rem if b == 0.0 => return None,
                Op::Rem => a % b,
                Op::Pow => a.powf(b),
            }
        }
        Node::Call(f, args) => {
            let mut xs = Vec::with_capacity(args.len());
            for a in args {
                xs.push(eval(a, values)?);
            }
            match f {
                Func::Min => xs.into_iter().fold(f64::INFINITY, f64::min),
                Func::Max => xs.into_iter().fold(f64::NEG_INFINITY, f64::max),
                Func::Abs => xs[0].abs(),
                Func::Round => xs[0].round(),
                Func::Floor => xs[0].floor(),
                Func::Ceil => xs[0].ceil(),
                Func::Sqrt => xs[0].sqrt(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(text: &str, names: &[&str], values: &[f64]) -> Option<f64> {
        let values: Vec<_> = values.iter().map(|v| Some(*v)).collect();
        Expr::parse(text, names).unwrap().eval(&values)
    }

    #[test]
    fn arithmetic_follows_the_usual_precedence() {
        assert_eq!(val("1 + 2 * 3", &[], &[]), Some(7.0));
        assert_eq!(val("(1 + 2) * 3", &[], &[]), Some(9.0));
        assert_eq!(val("2 ^ 3 ^ 2", &[], &[]), Some(512.0));
        assert_eq!(val("-2 ^ 2", &[], &[]), Some(-4.0));
        assert_eq!(val("10 - 4 - 3", &[], &[]), Some(3.0));
        assert_eq!(val("7 % 4 + 1e-1", &[], &[]), Some(3.1));
        assert_eq!(val("2.5e2 / 5", &[], &[]), Some(50.0));
        assert_eq!(val("max(1, -3, 2) + min(4) + abs(-1)", &[], &[]), Some(7.0));
        assert_eq!(
            val("round(2.5) + floor(1.9) + ceil(0.1)", &[], &[]),
            Some(5.0)
        );
    }

    #[test]
    fn the_use_cases_read_as_written() {
        let names = ["food_cost", "sales"];
        assert_eq!(
            val("food_cost / sales * 100", &names, &[300.0, 1000.0]),
            Some(30.0)
        );
        assert_eq!(val("food_cost / sales * 100", &names, &[300.0, 0.0]), None);
        let e = Expr::parse("spend / conversions", &["spend", "conversions", "unused"]).unwrap();
        assert_eq!(e.uses(), vec![0, 1]);
        assert_eq!(e.eval(&[Some(50.0), None, Some(1.0)]), None);
        assert_eq!(e.eval(&[Some(50.0), Some(4.0)]), Some(12.5));
        assert_eq!(val("sqrt(-1)", &[], &[]), None);
        assert_eq!(val("10 ^ 400", &[], &[]), None);
        assert_eq!(val("max(sqrt(-1), 0)", &[], &[]), None);
        assert_eq!(val("1 / 10 ^ 400", &[], &[]), None);
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let err = |text: &str| Expr::parse(text, &["sales"]).unwrap_err();
        assert_eq!(err("sales / salse").at, 9);
        assert!(err("sales / salse").message.contains("one of sales"));
        assert!(err("sales +").message.contains("ends early"));
        assert!(err("(sales").message.contains("')'"));
        assert!(err("sales sales").message.contains("operator"));
        assert!(err("system(1)").message.contains("not a function"));
        assert!(err("abs(1, 2)").message.contains("one argument"));
        assert!(err("sales; drop").message.contains("';'"));
        assert!(err("1.2.3").message.contains("not a number"));
        assert!(err("").message.contains("empty"));
        assert!(err(&"(".repeat(40)).message.contains("nested"));
        let long = vec!["1"; 200].join("+");
        assert!(err(&long).message.contains("terms"));
        assert!(err(&"1".repeat(600)).message.contains("longer"));
        assert!(err(&"-".repeat(40)).message.contains("nested"));
    }

    proptest::proptest! {
        /// Whatever the text, parsing returns (never panics), and so does
        /// evaluating what parsed, with inputs or without.
        #[test]
        fn any_text_parses_or_is_refused_without_a_panic(
            text in "[ab01.eE+*/%^(), _x-]{0,40}|\\PC{0,40}",
            a in proptest::num::f64::ANY,
        ) {
            if let Ok(e) = Expr::parse(&text, &["a", "b"]) {
                let _ = e.eval(&[Some(a), Some(0.0)]);
                let _ = e.eval(&[]);
            }
        }
    }
}
