//! Per-identity variants of a flag, so that each instance of a challenge
//! gets its own flag and a flag shared between teams points to its source.
//!
//! [`variate`] returns the same string as `Variate(identity, base)` of the
//! upstream chall-manager Go SDK (`sdk/variate.go`) with its default
//! options, so a shell scenario that calls `chall-manager flag variate` and
//! a Go scenario that calls the SDK give a team the same flag. The unit
//! tests compare against outputs of that algorithm run with Go 1.19's
//! `math/rand`.
//!
//! The algorithm:
//!
//! 1. The identity is right-padded with `'0'` to 8 bytes, and its first 8
//!    bytes, read as a big-endian integer, seed Go's `math/rand` v1
//!    generator ([`go_rand::GoSource`]). Later bytes are ignored.
//! 2. Each **byte** of the base is read as the code point of the same value
//!    (Latin-1), so a multi-byte UTF-8 character becomes several characters:
//!    `é` comes out as `Ã©`. Keep the base ASCII.
//! 3. A character is kept, without drawing a number, unless one of the
//!    groups of [`GROUPS`] contains it and it is among the candidates the
//!    [`Options`] enable for that group. Otherwise it is replaced by
//!    `candidates[Int63() % candidates.len()]`, where the candidates are the
//!    group's lowercase, uppercase, numeric and special characters, in that
//!    order and only for the enabled classes.
//!
//! With the default options, letters change case, and `a b e i o s t` may
//! also become `4 8 3 1 0 5 7` and back. Anything else, such as `{`, `}`,
//! `_` or a space, is kept, so write `CTF{` and `}` around the variant
//! rather than passing them in.
//!
//! The variant depends only on the identity and the base flag, so anyone
//! who has both can compute it.

mod go_rand;

use go_rand::GoSource;

/// Character classes that may take part in a variation, the SDK's
/// `WithLowercase`, `WithUppercase`, `WithNumeric` and `WithSpecial`.
///
/// A character is varied only if its own class is enabled, and it is
/// replaced only by characters of enabled classes in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Lowercase letters, on by default.
    pub lowercase: bool,
    /// Uppercase letters, on by default.
    pub uppercase: bool,
    /// Digits that look like a letter, such as `4` for `a`, on by default.
    pub numeric: bool,
    /// Symbols and accented letters, such as `@` for `a`, and the group
    /// `' ' - _ ~`. Off by default, because the result is hard to type and
    /// may contain non-ASCII characters.
    pub special: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { lowercase: true, uppercase: true, numeric: true, special: false }
    }
}

/// One group of interchangeable characters.
struct Group {
    lowercase: &'static [char],
    uppercase: &'static [char],
    numeric: &'static [char],
    special: &'static [char],
}

impl Group {
    const fn letter(lowercase: &'static [char], uppercase: &'static [char]) -> Self {
        Group { lowercase, uppercase, numeric: &[], special: &[] }
    }

    fn contains(&self, character: char) -> bool {
        [self.lowercase, self.uppercase, self.numeric, self.special].iter().any(|class| class.contains(&character))
    }

    /// Lists the characters of the enabled classes, in the SDK's order.
    fn candidates(&self, options: &Options) -> Vec<char> {
        let classes = [
            (options.lowercase, self.lowercase),
            (options.uppercase, self.uppercase),
            (options.numeric, self.numeric),
            (options.special, self.special),
        ];

        classes.into_iter().filter(|(enabled, _)| *enabled).flat_map(|(_, class)| class.iter().copied()).collect()
    }
}

/// The SDK's dictionary, in its order. No character is in two groups.
const GROUPS: [Group; 27] = [
    Group {
        lowercase: &['a'],
        uppercase: &['A'],
        numeric: &['4'],
        special: &['@', 'ª', 'À', 'Á', 'Â', 'Ã', 'Ä', 'Å', 'à', 'á', 'â', 'ã', 'ä', 'å'],
    },
    Group { lowercase: &['b'], uppercase: &['B'], numeric: &['8'], special: &['ß'] },
    Group { lowercase: &['c'], uppercase: &['C'], numeric: &[], special: &['(', '¢', '©', 'Ç', 'ç'] },
    Group { lowercase: &['d'], uppercase: &['D'], numeric: &[], special: &['Ð'] },
    Group {
        lowercase: &['e'],
        uppercase: &['E'],
        numeric: &['3'],
        special: &['€', '&', '£', 'È', 'É', 'Ê', 'Ë', 'è', 'é', 'ê', 'ë'],
    },
    Group { lowercase: &['f'], uppercase: &['F'], numeric: &[], special: &['ƒ'] },
    Group::letter(&['g'], &['G']),
    Group { lowercase: &['h'], uppercase: &['H'], numeric: &[], special: &['#'] },
    Group {
        lowercase: &['i'],
        uppercase: &['I'],
        numeric: &['1'],
        special: &['!', 'Ì', 'Í', 'Î', 'Ï', 'ì', 'í', 'î', 'ï'],
    },
    Group::letter(&['j'], &['J']),
    Group::letter(&['k'], &['K']),
    Group::letter(&['l'], &['L']),
    Group::letter(&['m'], &['M']),
    Group::letter(&['n'], &['N']),
    Group {
        lowercase: &['o'],
        uppercase: &['O'],
        numeric: &['0'],
        special: &['¤', '°', 'º', 'Ò', 'Ó', 'Ô', 'Õ', 'Ö', 'Ø', 'ø', 'ò', 'ó', 'ô', 'õ', 'ö', 'ð'],
    },
    Group::letter(&['p'], &['P']),
    Group::letter(&['q'], &['Q']),
    Group { lowercase: &['r'], uppercase: &['R'], numeric: &[], special: &['®'] },
    Group { lowercase: &['s'], uppercase: &['S'], numeric: &['5'], special: &['$', 'š', 'Š', '§'] },
    Group { lowercase: &['t'], uppercase: &['T'], numeric: &['7'], special: &['†'] },
    Group {
        lowercase: &['u'],
        uppercase: &['U'],
        numeric: &[],
        special: &['µ', 'Ù', 'Ú', 'Û', 'Ü', 'ù', 'ú', 'û', 'ü'],
    },
    Group::letter(&['v'], &['V']),
    Group::letter(&['w'], &['W']),
    Group { lowercase: &['x'], uppercase: &['X'], numeric: &[], special: &['×'] },
    Group { lowercase: &['y'], uppercase: &['Y'], numeric: &[], special: &['Ÿ', '¥', 'Ý', 'ý', 'ÿ'] },
    Group { lowercase: &['z'], uppercase: &['Z'], numeric: &[], special: &['ž', 'Ž'] },
    Group { lowercase: &[], uppercase: &[], numeric: &[], special: &[' ', '-', '_', '~'] },
];

/// Returns the variant of `base` for `identity` with the default
/// [`Options`], like the Go SDK's `Variate(identity, base)`.
pub fn variate(identity: &str, base: &str) -> String {
    variate_with(identity, base, &Options::default())
}

/// Returns the variant of `base` for `identity`, like the Go SDK's
/// `Variate(identity, base, opts...)` with the matching options.
pub fn variate_with(identity: &str, base: &str, options: &Options) -> String {
    let mut source = GoSource::new(seed(identity));

    base.bytes().map(|byte| vary(char::from(byte), options, &mut source)).collect()
}

/// Reads the first 8 bytes of the identity, right-padded with `'0'`, as a
/// big-endian integer.
fn seed(identity: &str) -> i64 {
    let mut bytes = [b'0'; 8];
    for (slot, byte) in bytes.iter_mut().zip(identity.bytes()) {
        *slot = byte;
    }

    i64::from_be_bytes(bytes)
}

/// Replaces one character, drawing a number only when it is varied, so
/// that the draws stay in step with the SDK's.
fn vary(character: char, options: &Options, source: &mut GoSource) -> char {
    let Some(group) = GROUPS.iter().find(|group| group.contains(character)) else {
        return character;
    };

    let candidates = group.candidates(options);
    if !candidates.contains(&character) {
        return character;
    }

    // Int63 is never negative, so the cast keeps its value.
    let index = source.int63() as u64 % candidates.len() as u64;
    candidates[index as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (identity, base, variant) computed by the Go SDK's algorithm with
    /// default options and Go 1.19's `math/rand`.
    const VARIANTS: &[(&str, &str, &str)] = &[
        ("a", "flag", "FlAG"),
        ("", "CTF{hello_world}", "CTf{HELL0_wORLD}"),
        ("team42", "s3cr3t_p4ssw0rd", "seCRET_P45SwORd"),
        ("0123456789abcdef", "this_is_the_flag", "tH1s_1s_thE_FlaG"),
        ("0123456789abcdef", "THIS IS THE FLAG", "tH1s 1s thE FlaG"),
        ("fedcba9876543210", "this_is_the_flag", "THi5_15_thE_flag"),
        ("0123456789abcdef", "some-dashes-and_underscores~", "s0Me-DashEs-aND_UNdeRscOrES~"),
        ("deadbeefcafebabe", "abcdefghijklmnopqrstuvwxyz", "4BCdEFgHijKlMNOPQr5TUVWXYZ"),
        ("deadbeefcafebabe", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "4BCdEFgHijKlMNOPQr5TUVWXYZ"),
        ("deadbeefcafebabe", "0123456789", "0I2EaS6TB9"),
        ("deadbeefcafebabe", "{}[]()<>!?@#$%^&*+=/\\|", "{}[]()<>!?@#$%^&*+=/\\|"),
        ("c0ffee00c0ffee00", "café", "cafÃ©"),
        ("c0ffee00c0ffee00", "日本", "æ\u{97}¥æ\u{9c}¬"),
        ("c0ffee00c0ffee00", "naïve_résumé", "naÃ¯v3_RÃ©5uMÃ©"),
        ("a-very-long-identity-that-goes-past-eight-bytes", "long_identity_flag", "l0Ng_IdENTITY_flAG"),
        ("a-very-lXXXXXXXXXXXXXXXX", "long_identity_flag", "l0Ng_IdENTITY_flAG"),
        ("é1234567", "negative_seed_flag", "n3GAtiVE_s3eD_fLag"),
        ("ÿÿÿÿ", "negative_seed_flag", "n3gATiv3_sEed_fl4G"),
        ("00000000", "zero_string_seed", "ZErO_S7R1ng_sE3D"),
        (
            "1a2b3c4d5e6f7a8b",
            "Sup3r_S3cure_Fl4g_w1th_many_l3tt3rs_4nd_d1g1ts",
            "SUpEr_sEcuR3_fL4g_w1th_mAny_LE7TeRs_aNd_D1GitS",
        ),
        (
            "1a2b3c4d5e6f7a8c",
            "Sup3r_S3cure_Fl4g_w1th_many_l3tt3rs_4nd_d1g1ts",
            "SUpEr_sEcuR3_fL4g_w1th_mAny_LE7TeRs_aNd_D1GitS",
        ),
        ("x", "", ""),
    ];

    /// (identity, base, options, variant) computed the same way with the
    /// given options.
    const OPTION_VARIANTS: &[(&str, &str, Options, &str)] = &[
        (
            "0123456789abcdef",
            "CTF{this is the_flag-~}",
            Options { lowercase: true, uppercase: true, numeric: true, special: true },
            "CTƒ{t#í$_î§_†hë-FLåG ~}",
        ),
        (
            "deadbeefcafebabe",
            "abcdefghijklmnopqrstuvwxyz0123456789 -_~",
            Options { lowercase: true, uppercase: true, numeric: true, special: true },
            "ªB(d3FgH!jKlMNõPQ®§TüVW×ÝZÓÌ2êªS6t89----",
        ),
        (
            "0123456789abcdef",
            "This_Is_The_Flag_1337",
            Options { lowercase: true, uppercase: false, numeric: true, special: false },
            "Th15_Is_Th3_Flag_1e37",
        ),
        (
            "0123456789abcdef",
            "This_Is_The_Flag_1337",
            Options { lowercase: true, uppercase: false, numeric: false, special: false },
            "This_Is_The_Flag_1337",
        ),
        (
            "0123456789abcdef",
            "This_Is_The_Flag_1337",
            Options { lowercase: false, uppercase: false, numeric: true, special: true },
            "This Is-The~Flag !é37",
        ),
        (
            "0123456789abcdef",
            "This_Is_The_Flag_1337",
            Options { lowercase: false, uppercase: false, numeric: false, special: false },
            "This_Is_The_Flag_1337",
        ),
    ];

    #[test]
    fn variate_matches_go_sdk() {
        for (identity, base, expected) in VARIANTS {
            assert_eq!(variate(identity, base), *expected, "identity {identity:?}, base {base:?}");
        }
    }

    #[test]
    fn variate_with_options_matches_go_sdk() {
        for (identity, base, options, expected) in OPTION_VARIANTS {
            assert_eq!(
                variate_with(identity, base, options),
                *expected,
                "identity {identity:?}, base {base:?}, {options:?}"
            );
        }
    }

    #[test]
    fn variate_is_deterministic() {
        let first = variate("3f2a9c1b7e6d5a40", "this_is_the_flag");
        let second = variate("3f2a9c1b7e6d5a40", "this_is_the_flag");

        assert_eq!(first, second);
    }

    #[test]
    fn identities_get_different_variants() {
        let base = "s3cr3t_fl4g_for_every_team";
        let variants: Vec<String> =
            ["3f2a9c1b7e6d5a40", "9b0e4d7c2a1f8e63", "00a1b2c3d4e5f607"].iter().map(|id| variate(id, base)).collect();

        assert_ne!(variants[0], variants[1]);
        assert_ne!(variants[0], variants[2]);
        assert_ne!(variants[1], variants[2]);
    }

    #[test]
    fn variant_only_swaps_within_groups() {
        let base = "CTF{this_is_the_flag}";
        let variant = variate("3f2a9c1b7e6d5a40", base);

        assert_eq!(variant.len(), base.len());
        for (original, varied) in base.chars().zip(variant.chars()) {
            let group = GROUPS.iter().find(|group| group.contains(original));
            match group {
                Some(group) if group.candidates(&Options::default()).contains(&original) => {
                    assert!(group.contains(varied), "{original:?} became {varied:?} in {variant}")
                }
                _ => assert_eq!(varied, original, "in {variant}"),
            }
        }
    }

    #[test]
    fn only_first_eight_bytes_of_identity_matter() {
        assert_eq!(variate("12345678", "flag_flag"), variate("12345678-and-more", "flag_flag"));
        assert_eq!(variate("abc", "flag_flag"), variate("abc00000", "flag_flag"));
    }

    #[test]
    fn groups_are_disjoint() {
        let mut seen = std::collections::HashSet::new();
        for group in &GROUPS {
            for class in [group.lowercase, group.uppercase, group.numeric, group.special] {
                for character in class {
                    assert!(seen.insert(*character), "{character:?} is in two groups");
                }
            }
        }
    }
}
