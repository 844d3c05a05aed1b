"""Wire protocols in front of the engine: OpenAI (`openai`) and Practicus (`practicus`)."""
