#!/usr/bin/env python3
"""Builds the worked example of README's "Your own data": Seattle's daily weather (data/seattle-weather.csv, NOAA,
public domain) cut into ISO calendar weeks, one row per day, each week labelled with its meteorological season
(December-February winter, March-May spring, June-August summer, September-November autumn, by the date of the
week's Thursday, which also decides the ISO year). Weeks at the ends of the record are shorter than 7 days.

Writes data/seattle-weeks-train.csv (weeks of 2012-2014) and data/seattle-weeks-test.csv (weeks of 2015), columns
week,date,precipitation,temp_max,temp_min,wind,season. Standard library only.
Run:  python3 scripts/make_seattle_weeks.py
"""

import csv
import datetime
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SEASONS = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring", 6: "summer", 7: "summer", 8: "summer"}


def main() -> None:
    with open(os.path.join(ROOT, "data", "seattle-weather.csv"), newline="") as f:
        days = list(csv.DictReader(f))
    fields = ["week", "date", "precipitation", "temp_max", "temp_min", "wind", "season"]
    out = {y: [] for y in ("train", "test")}
    for day in days:
        date = datetime.date.fromisoformat(day["date"])
        iso_year, iso_week, weekday = date.isocalendar()
        thursday = date + datetime.timedelta(days=4 - weekday)
        season = SEASONS.get(thursday.month, "autumn")
        row = {"week": f"{iso_year}-W{iso_week:02d}", "date": day["date"], "season": season}
        row.update({k: day[k] for k in ("precipitation", "temp_max", "temp_min", "wind")})
        out["test" if thursday.year == 2015 else "train"].append(row)
    for split, rows in out.items():
        path = os.path.join(ROOT, "data", f"seattle-weeks-{split}.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        weeks = len({r["week"] for r in rows})
        print(f"{path}: {len(rows)} days in {weeks} weeks")


if __name__ == "__main__":
    main()
