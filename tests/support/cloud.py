"""Credentials and names for the cloud stand-ins: made up, granting nothing, never sent
anywhere but 127.0.0.1."""

from __future__ import annotations

import uuid

GCS_BUCKET = "tqflow-test-bucket"


def sqs_credentials(endpoint: str):
    """AwsCredentials for the moto server (SQS and S3 alike)."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    return AwsCredentials(
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret-key",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )


def service_account_info() -> dict[str, str]:
    """A made-up service account with a freshly generated RSA key: enough for prefect-gcp's
    `GcpCredentials` and google-auth to build credentials offline. It grants nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "tqflow-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "tqflow-test@tqflow-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
