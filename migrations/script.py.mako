"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Write every op with ``schema=schema`` (the configured schema), never the literal "iterflow":
``alembic revision --autogenerate`` renders the schema it compared against, so replace it.
Raw SQL (``op.execute``) must name ``schema`` itself; procrastinate's objects live in the
default search_path (public).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg
${imports if imports else ""}
from iterflow.migrate import revision_schema

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    """Upgrade the iterflow schema."""
    schema = revision_schema(op.get_context())
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Downgrade the iterflow schema."""
    schema = revision_schema(op.get_context())
    ${downgrades if downgrades else "pass"}
