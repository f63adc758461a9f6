//! One name table per enum. Every spelling a user writes or reads (the config file, lbctl's arguments and tables,
//! JSON, error messages) comes from the table `named_enum!` is given, through `FromStr`, `Display`, serde and
//! clap's `ValueEnum` alike, so a name can be changed in one place and an error names what the user typed.

/// Defines a fieldless enum with one text per variant and every conversion a name needs.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling a user writes.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Every spelling, for error messages: "a, b, c".
            pub fn choices() -> String {
                [$($text),+].join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("{s:?} is not one of {}", Self::choices())),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        pub enum Colour {
            Red = "red",
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn every_conversion_uses_the_table() {
        assert_eq!(Colour::DarkBlue.to_string(), "dark-blue");
        assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
        assert_eq!(
            "Red".parse::<Colour>(),
            Err("\"Red\" is not one of red, dark-blue".to_string())
        );
        assert_eq!(
            serde_json::to_string(&Colour::DarkBlue).unwrap(),
            "\"dark-blue\""
        );
        assert_eq!(
            serde_json::from_str::<Colour>("\"red\"").unwrap(),
            Colour::Red
        );
        let e = serde_json::from_str::<Colour>("\"blue\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("\"blue\" is not one of red, dark-blue"),
            "{e}"
        );
        let v = <Colour as clap::ValueEnum>::from_str("dark-blue", false).unwrap();
        assert_eq!(v, Colour::DarkBlue);
    }
}
