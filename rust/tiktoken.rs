//! tiktoken rank files (how Qwen and Llama-3 ship their BPE): recover the merge list that an
//! HF tokenizer.json needs from the ranked byte tokens.

use crate::cache::FxBuild;
use std::collections::HashMap;

/// For each token of two or more bytes, in rank order, the two tokens it merges from:
/// `(left rank, right rank, rank)`. A token's merge is found by running BPE over its bytes
/// with only lower ranks allowed: the two parts left at the end are its merge. Tokens that do
/// not end in exactly two parts (unreachable through merges) are returned in the second list.
pub fn recover_merges(tokens: &[Vec<u8>]) -> (Vec<(u32, u32, u32)>, Vec<u32>) {
    let ranks: HashMap<&[u8], u32, FxBuild> = tokens
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let mut merges = Vec::new();
    let mut unreachable = Vec::new();
    for (r, tok) in tokens.iter().enumerate() {
        let r = r as u32;
        if tok.len() < 2 {
            continue;
        }
        // parts as boundaries into tok
        let mut bounds: Vec<usize> = (0..=tok.len()).collect();
        loop {
            let mut best = u32::MAX;
            let mut at = usize::MAX;
            for i in 0..bounds.len() - 2 {
                if let Some(&pr) = ranks.get(&tok[bounds[i]..bounds[i + 2]]) {
                    if pr < r && pr < best {
                        best = pr;
                        at = i;
                    }
                }
            }
            if at == usize::MAX {
                break;
            }
            bounds.remove(at + 1);
        }
        if bounds.len() == 3 {
            let left = ranks.get(&tok[..bounds[1]]);
            let right = ranks.get(&tok[bounds[1]..]);
            match (left, right) {
                (Some(&a), Some(&b)) => merges.push((a, b, r)),
                _ => unreachable.push(r),
            }
        } else {
            unreachable.push(r);
        }
    }
    (merges, unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_merge_of_each_token() {
        let toks: Vec<Vec<u8>> = ["a", "b", "c", "ab", "abc", "bc", "cab"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let (m, un) = recover_merges(&toks);
        // ab = a+b; abc = ab+c; bc = b+c; cab = c+ab
        assert_eq!(m, [(0, 1, 3), (3, 2, 4), (1, 2, 5), (2, 3, 6)]);
        assert!(un.is_empty());
    }
}
