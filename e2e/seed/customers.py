#!/usr/bin/env python3
"""Print SQL that creates and fills the e2e `shop` schema with realistic, synthetic personal data.

Deterministic (fixed seed), so tests can assert on values. Card numbers pass the Luhn check and
IBANs have their country's length and pass the ISO 13616 checksum, as real ones do; none
belongs to a real person.
"""
import random
import sys

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 500

FIRST = ["Anna", "Lukas", "Sofia", "Jonas", "Mia", "Elias", "Emma", "Noah", "Lea", "Finn",
         "Marie", "Paul", "Clara", "Felix", "Ida", "Leon", "Hanna", "Oskar", "Zoe", "Mateo",
         "Aisha", "Yusuf", "Chen", "Priya", "Olga", "Kwame", "Ines", "Tomás", "Sven", "Amélie"]
LAST = ["Müller", "Schmidt", "Garcia", "Rossi", "Dubois", "Nowak", "Jansen", "Silva", "Kowalski",
        "Novak", "Larsen", "O'Brien", "Fischer", "Weber", "Moreau", "Costa", "Virtanen", "Horvat",
        "Popescu", "Andersson", "Nakamura", "Okafor", "Patel", "Ivanova", "Haddad"]
STREETS = ["Hauptstraße", "Rue de la Paix", "Via Roma", "Kerkstraat", "Calle Mayor", "High Street",
           "Ulica Długa", "Storgatan", "Baker Street", "Ringstraße"]
CITIES = [("Berlin", "DE"), ("Paris", "FR"), ("Rome", "IT"), ("Amsterdam", "NL"),
          ("Madrid", "ES"), ("Dublin", "IE"), ("Warsaw", "PL"), ("Stockholm", "SE"),
          ("Vienna", "AT"), ("Lisbon", "PT")]
DOMAINS = ["example.com", "mail.example.org", "example.net"]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return digits + str((10 - total % 10) % 10)


# Length and shape of each country's BBAN (ISO 13616 registry): letters, then digits.
BBAN = {"DE": (0, 18), "FR": (0, 23), "IT": (1, 22), "NL": (4, 10), "ES": (0, 20),
        "IE": (4, 14), "PL": (0, 24), "SE": (0, 20), "AT": (0, 16), "PT": (0, 21)}


def iban(country: str, rng: random.Random) -> str:
    letters, digits = BBAN[country]
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters)) + \
        "".join(str(rng.randrange(10)) for _ in range(digits))
    rearranged = bban + country + "00"
    numeric = "".join(str(int(c, 36)) for c in rearranged)
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def main() -> None:
    rng = random.Random(20261123)
    out = sys.stdout
    out.write("""
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS customers;
CREATE TABLE customers (
    id          integer PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    ssn         text NOT NULL,
    card_number text,
    iban        text,
    phone       text,
    street      text,
    city        text,
    country     char(2),
    birth_date  date,
    created_at  timestamptz NOT NULL
);
CREATE TABLE orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    amount      numeric(10,2) NOT NULL,
    status      text NOT NULL,
    placed_at   timestamptz NOT NULL
);
""")
    rows = []
    for i in range(1, ROWS + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        city, country = rng.choice(CITIES)
        local = f"{first}.{last}".lower().replace("'", "").replace(" ", "")
        email = f"{local}{i}@{rng.choice(DOMAINS)}"
        ssn = f"{rng.randrange(100, 900):03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
        card = luhn_complete(rng.choice(["4", "51", "52", "37"]), 16 if rng.random() < 0.8 else 15, rng) \
            if rng.random() < 0.9 else None
        phone = f"+{rng.choice([49, 33, 39, 31, 34])} {rng.randrange(100, 999)} {rng.randrange(1000000, 9999999)}"
        street = f"{rng.choice(STREETS)} {rng.randrange(1, 200)}"
        birth = f"{rng.randrange(1940, 2005)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        created = f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:00+00"
        rows.append("(" + ", ".join([
            str(i), q(f"{first} {last}"), q(email), q(ssn), q(card) if card else "NULL",
            q(iban(country, rng)), q(phone), q(street), q(city), q(country), q(birth), q(created),
        ]) + ")")
    out.write("INSERT INTO customers VALUES\n" + ",\n".join(rows) + ";\n")
    orders = []
    for i in range(1, ROWS * 2 + 1):
        orders.append(f"({i}, {rng.randrange(1, ROWS + 1)}, {rng.randrange(100, 100000) / 100:.2f}, "
                      f"{q(rng.choice(['placed', 'paid', 'shipped', 'returned']))}, "
                      f"'2026-{rng.randrange(1, 12):02d}-{rng.randrange(1, 29):02d} 12:00:00+00')")
    out.write("INSERT INTO orders VALUES\n" + ",\n".join(orders) + ";\n")
    out.write("ANALYZE customers; ANALYZE orders;\n")


if __name__ == "__main__":
    main()
