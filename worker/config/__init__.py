"""Configuration: every setting read from the environment and checked at start-up, and the tenants.

    settings.py  Settings: the environment (and `.env`), each bad value one line naming it
    envfile.py   the working directory's `.env`, put into the environment where that sets nothing
    tenants.py   the tenants (TENANTS_FILE, else `default` from the environment): caller keys,
                 return-URL allowlists, Oktopost accounts with their keys as SecretStr
    flower.py    Flower without authentication is refused off loopback (asked by celeryconfig.py)
    brand.py     what the hosted pages show of a tenant (name, colour, logo, support link), checked

May import: worker.events. Everything else in the pipeline may import this package.
"""
