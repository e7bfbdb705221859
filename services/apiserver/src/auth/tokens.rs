//! Static bearer tokens (`--token-auth-file`), in Kubernetes' CSV format:
//! `token,user,uid[,"group1,group2"]`, one per line.

use std::collections::HashMap;
use std::path::Path;

use super::{UserInfo, AUTHENTICATED};

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Line { path: String, line: usize, reason: &'static str },
}

#[derive(Debug, Default)]
pub struct TokenFile {
    users: HashMap<String, UserInfo>,
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenFileError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|(line, reason)| TokenFileError::Line {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let [token, name, uid, rest @ ..] = fields.as_slice() else {
                return Err((i + 1, "needs token,user,uid[,\"groups\"]"));
            };
            if token.is_empty() || name.is_empty() {
                return Err((i + 1, "token and user must not be empty"));
            }
            let mut groups: Vec<String> = rest
                .iter()
                .flat_map(|g| g.split(','))
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            groups.push(AUTHENTICATED.to_string());
            if users.insert(token.clone(), UserInfo { name: name.clone(), uid: uid.clone(), groups }).is_some() {
                return Err((i + 1, "the token is listed twice"));
            }
        }
        Ok(Self { users })
    }

    pub fn user(&self, token: &str) -> Option<&UserInfo> {
        self.users.get(token)
    }
}

/// Splits one CSV line; a field in double quotes may hold commas.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_users_and_quoted_groups() {
        let file = TokenFile::parse("# comment\nt1,alice,u1,\"dev,ops\"\nt2,bob,u2\n").unwrap();
        let alice = file.user("t1").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", AUTHENTICATED]);
        assert_eq!(file.user("t2").unwrap().groups, [AUTHENTICATED]);
        assert!(file.user("t3").is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(TokenFile::parse("t1,alice\n").unwrap_err().0, 1);
        assert_eq!(TokenFile::parse("t1,a,1\nt1,b,2\n").unwrap_err(), (2, "the token is listed twice"));
        assert_eq!(TokenFile::parse(",a,1\n").unwrap_err().0, 1);
    }
}
