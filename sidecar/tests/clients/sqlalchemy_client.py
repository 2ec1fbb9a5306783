"""SQLAlchemy (psycopg 3 driver) through the proxy: Core and ORM results equal to a direct
connection."""

from sqlalchemy import Column, Integer, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Session

from queries import DIRECT_URL, PROXY_URL, QUERIES, check, finish, require


def engine(url):
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=2)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "portcullis_sa_notes"
    id = Column(Integer, primary_key=True)
    body = Column(String(200))


def core(eng):
    out = []
    with eng.connect() as conn:
        for q in QUERIES:
            res = conn.execute(text(q.replace(":", "\\:")))
            out.append((list(res.keys()), [tuple(r) for r in res]))
        out.append(conn.execute(text("SELECT id, email FROM customers WHERE id = :i"), {"i": 5}).all())
    return out


d, p = engine(DIRECT_URL), engine(PROXY_URL)
check("core", core(d), core(p))

Base.metadata.create_all(d)  # schema changes go directly; the agent only uses data.
with Session(p) as s:
    s.query(Note).filter(Note.id > 0).delete()
    s.add_all([Note(id=i, body=f"note {i}") for i in range(1, 21)])
    s.commit()
    require("orm count", s.scalar(select(func.count()).select_from(Note)) == 20)
    n = s.get(Note, 7)
    n.body = "edited"
    s.commit()
with Session(d) as s:
    require("orm visible directly", s.get(Note, 7).body == "edited")

finish("sqlalchemy")
