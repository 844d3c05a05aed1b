"""The xgboost tutorial's shape: `predict(http_request, df=None, ...)`."""

import pandas as pd


async def predict(http_request, df: pd.DataFrame | None = None, *args, **kwargs) -> pd.DataFrame:
    if kwargs.get("sub_path") == "info":
        return {
            "method": http_request.method,
            "path": http_request.url.path,
            "query": dict(http_request.query_params),
            "content_type": http_request.headers.get("content-type"),
            "body": (await http_request.body()).decode(),
            "df_rows": None if df is None else len(df),
        }
    if df is None:
        raise ValueError("No dataframe received")
    if "charges" in df.columns:
        df = df.drop("charges", axis=1)
    return pd.DataFrame({"Predictions": df.sum(axis=1, numeric_only=True)})
